"""Tenant scale: many tenants in one process, through ``get_tenant_db()``.

- **schema strategy**: tenant schemas are created in batches up to each size (by default
  10, 100, 1,000 and 10,000), each with a small ``items`` table. At each size every tenant
  is visited once, then random tenants are read; the process's resident memory,
  SQLAlchemy's compiled-statement cache and the latency of the random reads are recorded.
  Memory and the cache should stay flat: tenants share one engine and one statement text.
- **database strategy**: tenant databases (200 by default) made from a template database,
  ``tenancy.max_engines`` 50 and ``max_connections`` 80. Every tenant's first request
  (its engine is built and connects) is timed, then random tenants are read by concurrent
  clients while ``pg_stat_activity`` is sampled: the server must never see more
  connections from this process than the budget.

Everything is made in databases of its own on the server at ``--url`` (a role allowed to
create databases) and dropped at the end.

    python benchmarks/tenant_scale.py --url postgresql://postgres@127.0.0.1:5432/postgres
"""

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
from asgi_lifespan import LifespanManager
from bench_get_db import (
    CLIENT_SESSIONS,
    add_item_routes,
    asyncpg_url,
    call_asgi,
    execute_autocommit,
)
from fastapi import Depends, FastAPI
from sqlalchemy.engine import URL
from starlette.types import ASGIApp
from stats import counts, percentile

from dbrouter import DatabaseRouter, RouterSettings, get_tenant_db
from dbrouter.events import EngineBuilt, TenantEngineEvicted

__all__ = ["main"]

URL_ENV = "DBROUTER_BENCH_URL"

ROWS = 10
BATCH = 250
"""Schemas created per transaction."""
SAMPLE_EVERY = 0.02
ITEMS = (
    "CREATE TABLE {schema}items (id integer PRIMARY KEY, name text NOT NULL,"
    " hits integer NOT NULL DEFAULT 0)",
    "INSERT INTO {schema}items (id, name)"
    f" SELECT g, 'item ' || g FROM generate_series(1, {ROWS}) g",
)
"""A tenant's table, in *schema* (with its dot) or the database's default schema."""


def tenant_id(index: int) -> str:
    return f"t{index:05d}"


def resident_mb() -> float | None:
    """This process's resident memory in MB (Linux), else None."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def reading_app(router: DatabaseRouter) -> FastAPI:
    app = FastAPI(lifespan=router.lifespan)
    add_item_routes(
        app, reader=Depends(get_tenant_db()), writer=Depends(get_tenant_db(commit=True))
    )
    return app


async def drive(
    app: ASGIApp, tenants: Sequence[str], concurrency: int
) -> tuple[list[float], Counter[int]]:
    """Reads a row for each tenant of *tenants*, *concurrency* at a time: each request's
    latency in milliseconds and how many answers had each status."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    queue = iter(enumerate(tenants))

    async def worker() -> None:
        for index, tenant in queue:
            started = time.perf_counter()
            status, _ = await call_asgi(
                app, "GET", f"/items/{index % ROWS + 1}", [(b"x-tenant-id", tenant.encode())]
            )
            latencies.append(1e3 * (time.perf_counter() - started))
            statuses[status] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, statuses


@contextlib.asynccontextmanager
async def scratch(server: URL, *names: str) -> AsyncIterator[None]:
    """Databases *names* dropped when the block ends, however it ends."""
    try:
        yield
    finally:
        await execute_autocommit(
            server, *(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in names)
        )


async def create_schemas(url: URL, start: int, stop: int) -> None:
    """Tenant schemas *start* .. *stop* - 1, each with its items, in batches."""
    for first in range(start, stop, BATCH):
        last = min(stop, first + BATCH) - 1
        executes = "".join(
            "  EXECUTE format('{}', s);".format(
                statement.replace("'", "''").format(schema="%1$I.")
            )
            for statement in ITEMS
        )
        await execute_autocommit(
            url,
            "DO $$ DECLARE s text; BEGIN"
            f" FOR i IN {first}..{last} LOOP"
            "  s := 'tenant_t' || lpad(i::text, 5, '0');"
            "  EXECUTE format('CREATE SCHEMA %I', s);"
            f"{executes}"
            " END LOOP; END $$",
        )


async def schema_scale(server: URL, args: argparse.Namespace) -> list[dict[str, Any]]:
    name = f"dbrouter_bench_{os.getpid()}_schemas"
    await execute_autocommit(server, f'CREATE DATABASE "{name}"')
    rows: list[dict[str, Any]] = []
    async with scratch(server, name):
        url = server.set(database=name)
        router = DatabaseRouter(
            RouterSettings(
                databases={"primary": {"url": url.render_as_string(hide_password=False)}},
                tenancy={"strategy": "schema"},
            )
        )
        async with LifespanManager(reading_app(router)) as manager:
            cache = router.engine().sync_engine._compiled_cache
            created = 0
            for size in args.schemas:
                print(f"  {size} tenant schemas ...", file=sys.stderr, flush=True)
                await create_schemas(url, created, size)
                created = size
                tenants = [tenant_id(index) for index in range(size)]
                random.shuffle(tenants)
                await drive(manager.app, tenants, args.concurrency)
                chosen = random.choices(tenants, k=args.requests)
                latencies, statuses = await drive(manager.app, chosen, args.concurrency)
                if set(statuses) != {200}:
                    raise RuntimeError(f"schema tenants answered {dict(statuses)}")
                gc.collect()
                rows.append(
                    {
                        "tenants": size,
                        "rss_mb": resident_mb(),
                        "compiled_cache": None if cache is None else len(cache),
                        "p50_ms": percentile(latencies, 0.50),
                        "p99_ms": percentile(latencies, 0.99),
                    }
                )
    return rows


async def sample_connections(
    server: URL, prefix: str, router: DatabaseRouter, peaks: dict[str, int]
) -> None:
    """Until cancelled: the most connections the server shows to the tenant databases,
    and the most the router counts, every ``SAMPLE_EVERY`` seconds."""
    connection = await asyncpg.connect(
        server.set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        while True:
            seen = await connection.fetchval(
                f"{CLIENT_SESSIONS} AND datname LIKE $1", prefix + "%"
            )
            peaks["server"] = max(peaks["server"], int(seen))
            peaks["router"] = max(peaks["router"], router.open_connections or 0)
            await asyncio.sleep(SAMPLE_EVERY)
    finally:
        await connection.close()


async def database_scale(server: URL, args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"dbrouter_bench_{os.getpid()}_"
    template, main_db = prefix + "template", prefix + "main"
    tenants = [tenant_id(index) for index in range(args.databases)]
    names = [template, main_db, *(prefix + tenant for tenant in tenants)]
    async with scratch(server, *names):
        await execute_autocommit(
            server, f'CREATE DATABASE "{template}"', f'CREATE DATABASE "{main_db}"'
        )
        await execute_autocommit(
            server.set(database=template), *(statement.format(schema="") for statement in ITEMS)
        )
        print(f"  {args.databases} tenant databases ...", file=sys.stderr, flush=True)
        await execute_autocommit(
            server,
            *(f'CREATE DATABASE "{prefix}{tenant}" TEMPLATE "{template}"' for tenant in tenants),
        )
        url_template = (
            server.set(database=prefix + "TENANT")
            .render_as_string(hide_password=False)
            .replace("TENANT", "{tenant}")
        )
        router = DatabaseRouter(
            RouterSettings(
                databases={
                    "primary": {
                        "url": server.set(database=main_db).render_as_string(hide_password=False)
                    }
                },
                tenancy={"url_template": url_template, "max_engines": args.max_engines},
                max_connections=args.max_connections,
            )
        )
        built: Counter[str] = Counter()
        router.events.subscribe(EngineBuilt, lambda event: built.update([event.kind]))
        router.events.subscribe(TenantEngineEvicted, lambda event: built.update(["evicted"]))
        peaks = {"server": 0, "router": 0}
        async with LifespanManager(reading_app(router)) as manager:
            sampler = asyncio.create_task(sample_connections(server, prefix, router, peaks))
            try:
                random.shuffle(tenants)
                cold, cold_statuses = await drive(manager.app, tenants, args.concurrency)
                chosen = random.choices(tenants, k=args.requests)
                warm, statuses = await drive(manager.app, chosen, args.concurrency)
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
    return {
        "databases": args.databases,
        "max_engines": args.max_engines,
        "max_connections": args.max_connections,
        "server_connections_max": peaks["server"],
        "router_connections_max": peaks["router"],
        "cold_p50_ms": percentile(cold, 0.50),
        "cold_p99_ms": percentile(cold, 0.99),
        "random_p50_ms": percentile(warm, 0.50),
        "random_p99_ms": percentile(warm, 0.99),
        "engines_built": built["tenant"],
        "engines_evicted": built["evicted"],
        "statuses": {str(status): count for status, count in (cold_statuses + statuses).items()},
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--url",
        default=os.environ.get(URL_ENV),
        help=f"a PostgreSQL server, postgresql:// (default: ${URL_ENV})",
    )
    parser.add_argument("--schemas", type=counts, default=[10, 100, 1000, 10000])
    parser.add_argument("--databases", type=int, default=200)
    parser.add_argument("--max-engines", type=int, default=50)
    parser.add_argument("--max-connections", type=int, default=80)
    parser.add_argument("--requests", type=int, default=2000, help="random reads per size")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", type=Path, help="write the results there too")
    args = parser.parse_args(argv)
    if not args.url:
        parser.error(f"--url or ${URL_ENV} is required")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server = asyncpg_url(args.url)
    return {
        "schema": await schema_scale(server, args),
        "database": await database_scale(server, args),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(run(args))
    text = json.dumps(results, indent=2)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
