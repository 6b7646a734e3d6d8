"""Runs stacks in this process, in whatever environment this Python is: the project's own,
or a peer's (``benchmarks/.envs/<peer>``). ``compare.py`` starts it; it writes JSON.

- ``measure``: every stack in-process over a bare ASGI call, rounds rotated between the
  stacks (A B C, C B A, ...), for the read and the commit endpoint: requests per second and
  this process's CPU time per request, each round. Commits are checked in the database.
- ``round-trips``: every stack behind a counting proxy (``wire.py``), one request at a
  time: round trips per request, and the statements ``pg_stat_statements`` saw.
- ``serve``: one stack under uvicorn, for load from another process.
- ``prepare``: a database for the run, with the tables every stack reads (``items``, and
  ``tenant_acme.items`` for the schema tenant) and ``pg_stat_statements`` where the server
  loads it; ``drop`` drops it.

    python benchmarks/worker.py measure --url postgresql://... --stacks hand-written,get_db
"""

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asgi_lifespan import LifespanManager
from bench_get_db import (
    CLIENT_SESSIONS,
    COMMIT,
    READ,
    Call,
    Workload,
    asyncpg_url,
    call_asgi,
    create_items,
    execute_autocommit,
    raw_caller,
    run_round,
)
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from stacks import STACKS, TENANT_SCHEMA, Stack, find
from starlette.types import ASGIApp, Receive, Scope, Send
from stats import rotation
from wire import counting_proxy

__all__ = ["main", "versions"]

URL_ENV = "DBROUTER_BENCH_URL"

PACKAGES = (
    "fastapi",
    "starlette",
    "sqlalchemy",
    "asyncpg",
    "uvicorn",
    "fastapi-dbrouter",
    "advanced-alchemy",
    "fastapi-sqla",
    "fastapi-async-sqlalchemy",
    "fastapi-tenancy",
)
STARTUP_TIMEOUT = 60.0
ROUND_TRIP_WARMUP = 20


def versions() -> dict[str, str]:
    """Python and the versions of the packages of this environment that matter here."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def admin_engine(url: str) -> AsyncEngine:
    # Autocommit: its own statements add no BEGIN or ROLLBACK to the statistics.
    return create_async_engine(
        make_url(url).set(drivername="postgresql+asyncpg"),
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
    )


async def hits(admin: AsyncEngine, stack: Stack) -> int:
    async with admin.connect() as connection:
        query = text(f'SELECT sum(hits) FROM "{stack.schema}".items')
        return int((await connection.execute(query)).scalar_one())


def per_request_state(app: ASGIApp) -> ASGIApp:
    """*app*, each request given a copy of the lifespan state, as servers give it.

    asgi-lifespan hands every request the one state dict; a library that keeps a
    request's session in ``request.state`` would then share it between concurrent requests.
    """

    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "state" in scope:
            scope = {**scope, "state": dict(scope["state"])}
        await app(scope, receive, send)

    return call


@contextlib.asynccontextmanager
async def started(stacks: Sequence[Stack], url: str) -> Any:
    """Each stack's app built on *url* and its lifespan entered: a caller per stack."""
    async with contextlib.AsyncExitStack() as exits:
        calls: list[Call] = []
        for stack in stacks:
            manager = await exits.enter_async_context(
                LifespanManager(
                    per_request_state(stack.build(url)), startup_timeout=STARTUP_TIMEOUT
                )
            )
            status, body = await call_asgi(manager.app, "GET", READ.path(6), stack.headers)
            if status != 200 or json.loads(body) != {"id": 7, "name": "item 7"}:
                raise RuntimeError(f"{stack.name} answers {status} {body!r} for row 7")
            calls.append(raw_caller(manager.app, stack.headers))
        yield calls


async def measure(stacks: Sequence[Stack], args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        stack.name: {"read": [], "commit": []} for stack in stacks
    }
    admin = admin_engine(args.url)
    try:
        async with started(stacks, args.url) as calls:
            for workload in (READ, COMMIT):
                # Warm-up: every pool opens its connections, every statement cache fills.
                for call in calls:
                    await run_round(call, workload, args.requests, args.concurrency)
                for index in rotation(len(stacks), args.rounds):
                    stack = stacks[index]
                    before = await hits(admin, stack) if workload is COMMIT else 0
                    measured = await run_round(
                        calls[index], workload, args.requests, args.concurrency
                    )
                    if workload is COMMIT:
                        committed = await hits(admin, stack) - before
                        if committed != args.requests:
                            raise RuntimeError(
                                f"{stack.name}: {args.requests} commit requests, "
                                f"{committed} committed updates"
                            )
                    results[stack.name][workload.name].append(
                        {"throughput": measured.throughput, "cpu_us": measured.cpu_us}
                    )
    finally:
        await admin.dispose()
    return {"versions": versions(), "stacks": results}


async def statements_seen(admin: AsyncEngine) -> dict[str, int] | None:
    """Calls per statement in this database since the last reset, None without the
    extension."""
    query = text(
        "SELECT query, calls FROM pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND query NOT LIKE '%pg_stat_statements%'"
    )
    try:
        async with admin.connect() as connection:
            return {row.query: int(row.calls) for row in await connection.execute(query)}
    except Exception:
        return None


async def reset_statements(admin: AsyncEngine) -> None:
    with contextlib.suppress(Exception):
        async with admin.connect() as connection:
            await connection.execute(text("SELECT pg_stat_statements_reset()"))


async def count_round_trips(stacks: Sequence[Stack], args: argparse.Namespace) -> dict[str, Any]:
    url = make_url(args.url)
    admin = admin_engine(args.url)
    results: dict[str, dict[str, Any]] = {}
    try:
        async with counting_proxy(url.host or "127.0.0.1", url.port or 5432) as (port, proxy):
            proxied = url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
            async with started(stacks, proxied) as calls:
                for stack, call in zip(stacks, calls, strict=True):
                    results[stack.name] = {}
                    for workload in (READ, COMMIT):
                        results[stack.name][workload.name] = await count_one(
                            call, workload, proxy, admin, args.requests
                        )
    finally:
        await admin.dispose()
    return {"versions": versions(), "stacks": results}


async def count_one(
    call: Call, workload: Workload, proxy: Any, admin: AsyncEngine, requests: int
) -> dict[str, Any]:
    """Round trips and statements per request of *requests* sequential requests."""
    for index in range(ROUND_TRIP_WARMUP):
        await call(workload.method, workload.path(index))
    await reset_statements(admin)
    before = proxy.round_trips
    for index in range(requests):
        await call(workload.method, workload.path(index))
    round_trips = proxy.round_trips - before
    seen = await statements_seen(admin)
    statements = (
        None
        if seen is None
        else {query: calls / requests for query, calls in seen.items() if calls}
    )
    return {"round_trips": round_trips / requests, "statements": statements}


def database_url(server: str, name: str) -> str:
    return make_url(server).set(database=name).render_as_string(hide_password=False)


async def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Creates the database *args.database* on the server and what the stacks read in it."""
    await execute_autocommit(asyncpg_url(args.url), f'CREATE DATABASE "{args.database}"')
    url = database_url(args.url, args.database)
    await create_items(asyncpg_url(url))
    await create_items(asyncpg_url(url), schema=TENANT_SCHEMA)
    admin = admin_engine(url)
    try:
        async with admin.connect() as connection:
            version = (await connection.execute(text("SHOW server_version"))).scalar_one()
            allowed = int((await connection.execute(text("SHOW max_connections"))).scalar_one())
            in_use = (await connection.execute(text(CLIENT_SESSIONS))).scalar_one()
            # Only a server that loads the library at start can have the extension.
            with contextlib.suppress(Exception):
                await connection.execute(text("CREATE EXTENSION pg_stat_statements"))
        statements = await statements_seen(admin) is not None
    finally:
        await admin.dispose()
    return {
        "postgresql": version,
        "pg_stat_statements": statements,
        "connections_free": allowed - int(in_use),
        "stacks": {
            name: {"label": stack.label, "tenant": stack.tenant} for name, stack in STACKS.items()
        },
    }


async def drop(args: argparse.Namespace) -> dict[str, Any]:
    await execute_autocommit(
        asyncpg_url(args.url), f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)'
    )
    return {"dropped": args.database}


def serve(stack: Stack, args: argparse.Namespace) -> None:
    uvicorn: Any = importlib.import_module("uvicorn")
    uvicorn.run(
        stack.build(args.url),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("measure", "round-trips", "serve", "prepare", "drop"):
        command = commands.add_parser(name)
        command.add_argument(
            "--url",
            default=os.environ.get(URL_ENV),
            help=f"postgresql:// URL (default: ${URL_ENV})",
        )
        if name in ("prepare", "drop"):
            command.add_argument("--database", required=True, help="its name, on that server")
            command.add_argument("--json", type=Path, required=True, help="where to write results")
            continue
        if name == "serve":
            command.add_argument("--stack", required=True)
            command.add_argument("--port", type=int, required=True)
            continue
        command.add_argument("--stacks", required=True, help="comma-separated stack names")
        command.add_argument("--requests", type=int, default=2000)
        command.add_argument("--json", type=Path, required=True, help="where to write results")
        if name == "measure":
            command.add_argument("--rounds", type=int, default=8)
            command.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    if not args.url:
        parser.error(f"--url or ${URL_ENV} is required")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "serve":
        serve(find(args.stack), args)
        return 0
    if args.command in ("prepare", "drop"):
        results = asyncio.run(prepare(args) if args.command == "prepare" else drop(args))
    else:
        stacks = [find(name) for name in args.stacks.split(",")]
        run = measure if args.command == "measure" else count_round_trips
        results = asyncio.run(run(stacks, args))
    # Results go to a file: some peers log to standard output.
    args.json.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
