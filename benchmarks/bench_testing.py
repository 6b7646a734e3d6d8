"""Per-test cost of dbrouter's isolation fixtures against a bare ``AsyncSession`` test.

Two small pytest projects run the same test body, parametrized into ``--tests`` tests, on
the same PostgreSQL database:

* bare: a session-scoped ``create_async_engine`` and, per test, an ``AsyncSession`` from
  ``async_sessionmaker``, rolled back at the end;
* dbrouter: the plugin's ``dbrouter`` fixture (the app's router rebuilt for the test, an
  outer transaction rolled back at the end) and, per test, ``dbrouter.session()``.

The body inserts a row and counts it. Each project runs in a fresh pytest, as a user runs
their tests; the time of each test (setup, call and teardown) comes from pytest's JUnit
XML report, and a run's figure is the mean test, but for the session's first test, which
also sets the session up. Runs alternate A B B A ... so that drift affects
both sides alike; the result is the median of the per-pair differences, against the target
of 5 ms per test.

PostgreSQL comes from ``--url`` or ``DBROUTER_BENCH_URL`` (a role allowed to create
databases: the projects work in a scratch database); without either, a throwaway server is
started with the harness the package ships (``dbrouter.testing.postgres``).

    python benchmarks/bench_testing.py [--url postgresql://user@host/postgres] [--rounds 4]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Sequence
from pathlib import Path

from sqlalchemy.engine import make_url

URL_ENV = "DBROUTER_BENCH_URL"
TARGET_MS = 5.0

CONFIGURATION = """\
[tool.pytest.ini_options]
pythonpath = ["."]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "session"
asyncio_default_test_loop_scope = "session"
dbrouter_router = "bench_app:router"
"""

APP = """\
from dbrouter import DatabaseRouter, RouterSettings

router = DatabaseRouter(
    RouterSettings(databases={{"primary": {{"url": "postgresql://bench@db.internal/{database}"}}}})
)
"""

BODY = """\
import pytest
from sqlalchemy import text


@pytest.mark.parametrize("n", range({tests}))
async def test_body(session, n):
    await session.execute(text("INSERT INTO items (n) VALUES (:n)"), {{"n": n}})
    count = await session.scalar(text("SELECT count(*) FROM items WHERE n = :n"), {{"n": n}})
    assert count >= 1
"""

BARE = """\
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine


@pytest.fixture(scope="session")
async def sessions():
    engine = create_async_engine("{url}")
    yield async_sessionmaker(engine, expire_on_commit=False)
    await engine.dispose()


@pytest.fixture
async def session(sessions):
    async with sessions() as session:
        yield session
        await session.rollback()
"""

ISOLATED = """\
import pytest


@pytest.fixture
async def session(dbrouter):
    async with dbrouter.session() as session:
        yield session
"""


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    """The URL of the server: the one given, or a throwaway one."""
    if url:
        yield url
        return
    from dbrouter.testing.postgres import running_server

    with running_server() as started:
        yield started.url()


def prepare(root: Path, url: str, database: str, tests: int) -> dict[str, Path]:
    """The two projects, and the scratch database with its table."""
    import asyncio

    import asyncpg

    async def create() -> None:
        admin = await asyncpg.connect(url)
        try:
            await admin.execute(f'CREATE DATABASE "{database}"')
        finally:
            await admin.close()
        scratch_url = make_url(url).set(database=database).render_as_string(hide_password=False)
        scratch = await asyncpg.connect(scratch_url)
        try:
            await scratch.execute("CREATE TABLE items (id bigserial PRIMARY KEY, n int NOT NULL)")
        finally:
            await scratch.close()

    asyncio.run(create())
    database_url = make_url(url).set(drivername="postgresql+asyncpg", database=database)
    projects = {}
    for side, fixtures in (("bare", BARE), ("dbrouter", ISOLATED)):
        project = root / side
        project.mkdir()
        (project / "pyproject.toml").write_text(CONFIGURATION)
        (project / "bench_app.py").write_text(APP.format(database=database))
        (project / "conftest.py").write_text(
            fixtures.format(url=database_url.render_as_string(hide_password=False))
        )
        (project / "test_body.py").write_text(BODY.format(tests=tests))
        projects[side] = project
    return projects


def drop(url: str, database: str) -> None:
    """Drop the scratch database."""
    import asyncio

    import asyncpg

    async def run() -> None:
        admin = await asyncpg.connect(url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(run())


def per_test_ms(project: Path, url: str) -> float:
    """The mean time of a test of *project*, setup and teardown included, in ms."""
    report = project / "report.xml"
    env = {key: value for key, value in os.environ.items() if not key.startswith("DBROUTER_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--dbrouter-postgres-url={url}",
            f"--junitxml={report}",
            "-o",
            "junit_duration_report=total",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the {project.name} project failed:\n{result.stdout}{result.stderr}")
    times = [float(case.get("time", "0")) for case in ElementTree.parse(report).iter("testcase")]
    # The report counts whole milliseconds: the mean of many tests sees finer than that.
    # The first test also sets the session up, and does not count.
    return statistics.fmean(times[1:]) * 1000


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", default=os.environ.get(URL_ENV), help=f"or ${URL_ENV}")
    parser.add_argument("--rounds", type=int, default=4, help="pairs of runs (default 4)")
    parser.add_argument("--tests", type=int, default=200, help="tests per run (default 200)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with server(args.url) as url, tempfile.TemporaryDirectory() as directory:
        database = f"dbrouter_bench_{uuid.uuid4().hex[:8]}"
        projects = prepare(Path(directory), url, database, args.tests)
        shown = make_url(url).render_as_string(hide_password=True)
        print(f"PostgreSQL: {shown}, {args.tests} tests per run, {args.rounds} pairs of runs")
        differences = []
        try:
            for number in range(args.rounds):
                order = ("bare", "dbrouter") if number % 2 == 0 else ("dbrouter", "bare")
                figures = {side: per_test_ms(projects[side], url) for side in order}
                difference = figures["dbrouter"] - figures["bare"]
                differences.append(difference)
                print(
                    f"  pair {number + 1}: bare {figures['bare']:.2f} ms/test, "
                    f"dbrouter {figures['dbrouter']:.2f} ms/test, "
                    f"overhead {difference:+.2f} ms"
                )
        finally:
            drop(url, database)
    overhead = statistics.median(differences)
    verdict = "within" if overhead < TARGET_MS else "OVER"
    print(
        f"\nisolation overhead: {overhead:.2f} ms per test (median of {len(differences)} pairs), "
        f"{verdict} the target of {TARGET_MS:.0f} ms"
    )
    print(f"total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
