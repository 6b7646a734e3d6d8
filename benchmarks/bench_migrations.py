"""Fleet migrations at scale: ``status`` and a no-op ``upgrade`` over many schema tenants,
and what ``concurrency`` buys on many tenant databases.

1. Schema tenants: ``--schemas`` schemas (default 1000) in one database, migrated from
   base to head once (two revisions: a table with an index, then a column), then timed:
   ``status`` (every tenant's revision read and compared with head) and ``upgrade`` again
   (every tenant at head already: the no-op a deploy pays for when nothing changed).
2. Tenant databases: ``--databases`` databases (default 100), each migrated from base to
   head, timed at each ``--concurrency`` level (default 1, 4 and 8) in rotating order, each
   run preceded by an untimed downgrade to base. The speed-up is the median time at
   concurrency 1 over the median time at each level, measured side by side in one run.

Everything goes through ``dbrouter.migrations``, as ``dbrouter migrate`` does. PostgreSQL
comes from ``--url`` or ``DBROUTER_BENCH_URL`` (a role allowed to create databases; the
benchmark creates its own and drops them); without either, a throwaway server is started
with the test suite's harness.

    python benchmarks/bench_migrations.py [--schemas 1000] [--databases 100] [--rounds 3]
"""

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from dbrouter import DatabaseRouter, RouterSettings, migrations
from dbrouter.migrations import MigrationReport

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

URL_ENV = "DBROUTER_BENCH_URL"

# A table with an index, then a column: (id, down revision, upgrade, downgrade).
REVISIONS = (
    (
        "b1",
        None,
        """
        op.create_table(
            "items",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.Text, nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        )
        op.create_index("ix_items_name", "items", ["name"])
        """,
        'op.drop_table("items")',
    ),
    (
        "b2",
        "b1",
        'op.add_column("items", sa.Column("done", sa.Boolean, server_default="false"))',
        'op.drop_column("items", "done")',
    ),
)


def bench_scripts(path: Path) -> Path:
    """A script directory with the benchmark's two revisions (written as the test suite
    writes its own)."""
    from tests.support.scripts import Revision, script_directory

    return script_directory(path, [Revision(*revision) for revision in REVISIONS])


def with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def databases(admin_url: str, names: Sequence[str]) -> AsyncIterator[None]:
    """Create the databases *names*, and drop them afterwards."""
    admin = await asyncpg.connect(admin_url)
    try:
        for name in names:
            await admin.execute(f'CREATE DATABASE "{name}"')
        yield
    finally:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def checked(report: MigrationReport, expected: int, *, status: str | None = None) -> None:
    """Stop the benchmark when a run did not do what it is meant to measure."""
    if len(report.targets) != expected or report.failed:
        raise SystemExit(f"{report.command}: {report.failed} failed of {len(report.targets)}")
    if status is not None and {result.status for result in report.targets} != {status}:
        raise SystemExit(f"{report.command}: expected every target {status}")


async def schema_tenants(admin_url: str, scripts: Path, count: int, concurrency: int) -> None:
    name = f"dbrouter_bench_{os.getpid()}_schemas"
    async with databases(admin_url, [name]):
        url = with_database(admin_url, name)
        connection = await asyncpg.connect(url)
        try:
            async with connection.transaction():
                for index in range(count):
                    await connection.execute(f'CREATE SCHEMA "tenant_t{index:05d}"')
        finally:
            await connection.close()
        settings = RouterSettings(
            databases={"primary": {"url": url}},
            tenancy={"strategy": "schema", "migrations": scripts},
        )
        print(f"schema tenants: {count} schemas in one database, concurrency {concurrency}")
        async with DatabaseRouter(settings) as router:
            for label, run, expected in (
                ("upgrade base -> head", migrations.upgrade, "ok"),
                ("status", migrations.status, "unchanged"),
                ("upgrade at head (no-op)", migrations.upgrade, "unchanged"),
            ):
                started = time.perf_counter()
                report = await run(router, concurrency=concurrency)
                seconds = time.perf_counter() - started
                checked(report, count, status=expected)
                per_target = seconds / count * 1000
                print(f"  {label:<24} {seconds:8.2f} s   {per_target:6.2f} ms per tenant")


async def tenant_databases(
    admin_url: str, scripts: Path, count: int, levels: Sequence[int], rounds: int
) -> None:
    prefix = f"dbrouter_bench_{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}_t{index:04d}" for index in range(count)]
    print(f"tenant databases: {count}, base -> head, {rounds} round(s) per concurrency level")
    async with databases(admin_url, names):
        settings = RouterSettings(
            databases={"primary": {"url": with_database(admin_url, "postgres")}},
            tenancy={
                "url_template": with_database(admin_url, f"{prefix}_{{tenant}}"),
                "migrations": scripts,
            },
        )
        seconds: dict[int, list[float]] = {level: [] for level in levels}
        async with DatabaseRouter(settings) as router:
            for round_index in range(rounds):
                # Rotating order, so that drift affects every level alike.
                order = list(levels) if round_index % 2 == 0 else list(reversed(levels))
                for level in order:
                    checked(await migrations.downgrade(router, "base", concurrency=8), count)
                    started = time.perf_counter()
                    report = await migrations.upgrade(router, all_tenants=True, concurrency=level)
                    seconds[level].append(time.perf_counter() - started)
                    checked(report, count, status="ok")
        baseline = statistics.median(seconds[levels[0]])
        for level in levels:
            median = statistics.median(seconds[level])
            runs = ", ".join(f"{value:.2f}" for value in seconds[level])
            print(
                f"  concurrency {level:>2}: median {median:6.2f} s  "
                f"(runs {runs})  speed-up {baseline / median:4.2f}x"
            )


async def run(admin_url: str, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="dbr-bench-") as scratch:
        scripts = bench_scripts(Path(scratch) / "tenants")
        await schema_tenants(admin_url, scripts, args.schemas, args.concurrency[-1])
        await tenant_databases(admin_url, scripts, args.databases, args.concurrency, args.rounds)


def levels(value: str) -> list[int]:
    parsed = sorted({int(part) for part in value.split(",")})
    if not parsed or parsed[0] < 1:
        raise argparse.ArgumentTypeError("concurrency levels are whole numbers of at least 1")
    return parsed


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=os.environ.get(URL_ENV), help="a PostgreSQL URL")
    parser.add_argument("--schemas", type=int, default=1000, help="schema tenants")
    parser.add_argument("--databases", type=int, default=100, help="tenant databases")
    parser.add_argument(
        "--concurrency", type=levels, default=[1, 4, 8], help="levels, such as 1,4,8"
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs per concurrency level")
    return parser.parse_args(argv)


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    from tests.support.postgres import running_server

    with running_server() as started:
        yield started.url()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with server(args.url) as url:
        asyncio.run(run(url, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
