"""Per-request cost of ``Depends(get_db(...))`` against the hand-written session dependency.

Two FastAPI apps serve the same endpoints on the same PostgreSQL database:

* hand-written: ``create_async_engine`` + ``async_sessionmaker`` with the pool settings
  dbrouter uses by default, and a ``get_session`` dependency (``get_session_commit``,
  function-scoped, for writes);
* dbrouter: ``DatabaseRouter`` + ``FastAPI(lifespan=router.lifespan)`` +
  ``Depends(get_db("primary"))`` (``commit=True`` for writes).

Each pair (``read``: ``GET /items/{id}``, ``commit``: ``POST /items/{id}/hits``) is driven
twice, in-process: through ``httpx.ASGITransport`` and through a bare ASGI call that skips
HTTP entirely (less fixed cost per request, so a difference between the sides shows more).
Rounds alternate A B B A A B ... so that drift (CPU frequency, autovacuum, caches) hits both
sides alike; the reported ratio is median dbrouter throughput / median hand-written one.

PostgreSQL comes from ``--url`` or ``DBROUTER_BENCH_URL`` (a role allowed to create
databases: the benchmark works in a scratch database it creates and drops); without either,
a throwaway server is started with the test suite's harness.

    python benchmarks/bench_get_db.py [--url postgresql://user@host/db] [--rounds 8]
"""

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI
from fastapi.params import Depends as DependsParam
from machine import pin_cpus
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool
from starlette.types import ASGIApp, Message, Scope

from dbrouter import DatabaseRouter, RouterSettings, get_db

# Run as a script, only benchmarks/ is on sys.path; the throwaway-server harness lives in
# the repository's tests package.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

URL_ENV = "DBROUTER_BENCH_URL"
TARGET_RATIO = 0.97
# Identical apps on a quiet machine give paired-round ratios within about 5% of each other;
# a wider span means outside load, and the median ratio is then unreliable.
NOISY_SPREAD = 1.15
ROWS = 1000

SELECT_ITEM = text("SELECT id, name FROM items WHERE id = :id")
HIT_ITEM = text("UPDATE items SET hits = hits + 1 WHERE id = :id")
CLIENT_SESSIONS = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
"""How many sessions clients have open on the server: its own processes (autovacuum
workers, under the database they visit) have slots of their own."""

Call = Callable[[str, str], Awaitable[None]]
"""Sends one request (method, path) to one app; raises unless the answer is a 200."""


# --------------------------------------------------------------------------------------
# The two apps
# --------------------------------------------------------------------------------------


def add_item_routes(app: FastAPI, *, reader: DependsParam, writer: DependsParam) -> None:
    """The endpoints both apps share; only the session dependencies differ."""

    @app.get("/items/{item_id}")
    async def read_item(item_id: int, session: Annotated[AsyncSession, reader]) -> dict[str, Any]:
        row = (await session.execute(SELECT_ITEM, {"id": item_id})).one()
        return {"id": row.id, "name": row.name}

    @app.post("/items/{item_id}/hits")
    async def hit_item(item_id: int, session: Annotated[AsyncSession, writer]) -> dict[str, Any]:
        await session.execute(HIT_ITEM, {"id": item_id})
        return {"id": item_id}


def hand_written_app(url: URL, *, pool_pre_ping: bool = True) -> FastAPI:
    """The pattern dbrouter replaces, as services write it by hand."""
    engine = create_async_engine(
        url,
        pool_size=20,
        max_overflow=10,
        pool_recycle=3600,
        pool_pre_ping=pool_pre_ping,
        pool_use_lifo=True,
        pool_timeout=30,
        connect_args={"timeout": 10},
    )
    SessionLocal = async_sessionmaker(
        engine, class_=AsyncSession, autoflush=False, expire_on_commit=False
    )

    async def get_session() -> AsyncIterator[AsyncSession]:
        async with SessionLocal() as session:
            yield session

    async def get_session_commit() -> AsyncIterator[AsyncSession]:
        async with SessionLocal() as session:
            yield session
            await session.commit()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    add_item_routes(
        app,
        reader=Depends(get_session),
        # Without scope="function" the commit would run after the response is sent.
        writer=Depends(get_session_commit, scope="function"),
    )
    return app


def dbrouter_app(url: URL) -> FastAPI:
    router = DatabaseRouter(
        RouterSettings(databases={"primary": {"url": url.render_as_string(hide_password=False)}})
    )
    app = FastAPI(lifespan=router.lifespan)
    add_item_routes(
        app, reader=Depends(get_db("primary")), writer=Depends(get_db("primary", commit=True))
    )
    return app


# --------------------------------------------------------------------------------------
# Two ways of sending a request
# --------------------------------------------------------------------------------------


def http_caller(client: httpx.AsyncClient) -> Call:
    async def call(method: str, path: str) -> None:
        response = await client.request(method, path)
        if response.status_code != 200:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")

    return call


async def call_asgi(
    app: ASGIApp, method: str, path: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> tuple[int, bytes]:
    """Calls *app* the way an ASGI server would, minus sockets and HTTP parsing: the
    status and body of its answer."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("bench", 80),
    }
    request_sent = False
    status = 0
    body: list[bytes] = []

    async def receive() -> Message:
        nonlocal request_sent
        if request_sent:
            return {"type": "http.disconnect"}
        request_sent = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(body)


def raw_caller(app: ASGIApp, headers: Sequence[tuple[bytes, bytes]] = ()) -> Call:
    """Calls *app* through `call_asgi`; raises unless the answer is a 200."""

    async def call(method: str, path: str) -> None:
        status, body = await call_asgi(app, method, path, headers)
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status} {body.decode()}")

    return call


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    method: str
    route: str

    def path(self, index: int) -> str:
        # Consecutive indexes name distinct rows, so concurrent updates never wait on a lock.
        return self.route.format(id=index % ROWS + 1)


READ = Workload("read", "GET", "/items/{id}")
COMMIT = Workload("commit", "POST", "/items/{id}/hits")


@dataclass(frozen=True)
class Round:
    throughput: float
    """Requests per second (wall clock)."""
    cpu_us: float
    """CPU time of this process per request, in microseconds: client, app and driver."""


@dataclass
class Comparison:
    transport: str
    workload: Workload
    hand_written: list[Round] = field(default_factory=list)
    dbrouter: list[Round] = field(default_factory=list)

    @property
    def throughputs(self) -> tuple[float, float]:
        """Median requests per second: hand-written, dbrouter."""
        return (
            statistics.median(r.throughput for r in self.hand_written),
            statistics.median(r.throughput for r in self.dbrouter),
        )

    @property
    def cpu_us(self) -> tuple[float, float]:
        """Median CPU microseconds per request: hand-written, dbrouter."""
        return (
            statistics.median(r.cpu_us for r in self.hand_written),
            statistics.median(r.cpu_us for r in self.dbrouter),
        )

    @property
    def ratio(self) -> float:
        hand, dbr = self.throughputs
        return dbr / hand

    @property
    def overhead_us(self) -> float:
        """Extra wall time per request of dbrouter, from the median throughputs."""
        hand, dbr = self.throughputs
        return 1e6 / dbr - 1e6 / hand

    @property
    def round_ratio_range(self) -> tuple[float, float]:
        """Lowest and highest dbrouter / hand-written ratio of paired rounds."""
        ratios = [
            dbr.throughput / hand.throughput
            for hand, dbr in zip(self.hand_written, self.dbrouter, strict=True)
        ]
        return min(ratios), max(ratios)

    @property
    def cpu_overhead_us(self) -> float:
        hand, dbr = self.cpu_us
        return dbr - hand


async def run_round(call: Call, workload: Workload, requests: int, concurrency: int) -> Round:
    """One round of *requests* at *concurrency*."""
    indexes = iter(range(requests))

    async def worker() -> None:
        for index in indexes:
            await call(workload.method, workload.path(index))

    # A collection left over from the previous round would be billed to this one.
    gc.collect()
    cpu_start = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    return Round(throughput=requests / elapsed, cpu_us=1e6 * cpu / requests)


def interleaved(rounds: int) -> Iterator[bool]:
    """A B B A A B B A ...: True for dbrouter; each side runs *rounds* times."""
    for index in range(2 * rounds):
        yield index % 4 in (1, 2)


async def compare(
    comparison: Comparison,
    hand_written: Call,
    dbrouter: Call,
    *,
    rounds: int,
    requests: int,
    concurrency: int,
) -> None:
    workload = comparison.workload
    # Warm-up: opens every pooled connection and fills the statement caches on both sides.
    for call in (hand_written, dbrouter):
        await run_round(call, workload, requests, concurrency)
    for is_dbrouter in interleaved(rounds):
        call, results = (
            (dbrouter, comparison.dbrouter)
            if is_dbrouter
            else (hand_written, comparison.hand_written)
        )
        results.append(await run_round(call, workload, requests, concurrency))


# --------------------------------------------------------------------------------------
# The database
# --------------------------------------------------------------------------------------


def asyncpg_url(raw: str) -> URL:
    url = make_url(raw)
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise SystemExit(f"not a PostgreSQL URL: {url.render_as_string(hide_password=True)}")
    return url.set(drivername="postgresql+asyncpg")


async def execute_autocommit(url: URL, *statements: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def fetch_value(url: URL, statement: str) -> Any:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            return (await connection.execute(text(statement))).scalar_one()
    finally:
        await engine.dispose()


async def create_items(url: URL, *, schema: str | None = None) -> None:
    """The items table, in *schema* (created) or the default one."""
    table = "items" if schema is None else f'"{schema}".items'
    await execute_autocommit(
        url,
        *([] if schema is None else [f'CREATE SCHEMA "{schema}"']),
        f"CREATE TABLE {table} (id integer PRIMARY KEY, name text NOT NULL, "
        "hits integer NOT NULL DEFAULT 0)",
        f"INSERT INTO {table} (id, name) SELECT g, 'item ' || g FROM generate_series(1, {ROWS}) g",
        f"VACUUM ANALYZE {table}",
    )


@contextlib.asynccontextmanager
async def scratch_database(server_url: URL) -> AsyncIterator[URL]:
    """A database of its own on the server at *server_url*, dropped afterwards."""
    name = f"dbrouter_bench_{os.getpid()}"
    await execute_autocommit(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield server_url.set(database=name)
    finally:
        await execute_autocommit(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class Target:
    url: URL
    scratch: bool
    """Whether *url* names a server to create a scratch database on (else: the database)."""
    postmaster_pid: int | None
    """The server's main process when it runs on this machine and is ours to pin."""


@contextlib.contextmanager
def target(raw: str | None) -> Iterator[Target]:
    if raw:
        yield Target(asyncpg_url(raw), scratch=True, postmaster_pid=None)
        return
    # Imported only here: the harness needs PostgreSQL's server programs on this machine.
    from tests.support.postgres import running_server

    with running_server() as server:
        url = asyncpg_url(server.create_database("dbrouter_bench"))
        pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        yield Target(url, scratch=False, postmaster_pid=pid)


# --------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------


async def run(url: URL, args: argparse.Namespace) -> list[Comparison]:
    await create_items(url)
    hand_app = hand_written_app(url)
    dbr_app = dbrouter_app(url)
    comparisons: list[Comparison] = []
    async with (
        LifespanManager(hand_app) as hand_lifespan,
        LifespanManager(dbr_app) as dbr_lifespan,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=hand_lifespan.app), base_url="http://bench"
        ) as hand_client,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=dbr_lifespan.app), base_url="http://bench"
        ) as dbr_client,
    ):
        # LifespanManager.app puts the lifespan state in every request's scope, as servers do.
        callers: dict[str, tuple[Call, Call]] = {
            "http": (http_caller(hand_client), http_caller(dbr_client)),
            "raw ASGI": (raw_caller(hand_lifespan.app), raw_caller(dbr_lifespan.app)),
        }
        answers = [(await client.get(READ.path(6))).json() for client in (hand_client, dbr_client)]
        if answers[0] != answers[1]:
            raise RuntimeError(f"the apps answer differently: {answers}")
        for transport, (hand_call, dbr_call) in callers.items():
            for workload in (READ, COMMIT):
                comparison = Comparison(transport, workload)
                print(f"  running {transport} / {workload.name} ...", file=sys.stderr, flush=True)
                await compare(
                    comparison,
                    hand_call,
                    dbr_call,
                    rounds=args.rounds,
                    requests=args.requests,
                    concurrency=args.concurrency,
                )
                comparisons.append(comparison)
    # Every commit request ran an UPDATE; if a side did not commit, hits fall short.
    commits = len(callers) * 2 * (args.rounds + 1) * args.requests
    hits = await fetch_value(url, "SELECT sum(hits) FROM items")
    if hits != commits:
        raise RuntimeError(f"{commits} commit requests but {hits} committed updates")
    print(f"  {hits} updates committed for {commits} commit requests", file=sys.stderr)
    return comparisons


def report(comparisons: Sequence[Comparison], args: argparse.Namespace) -> None:
    for comparison in comparisons:
        workload = comparison.workload
        print()
        print(
            f"{comparison.transport} | {workload.name}: {workload.method} {workload.route} | "
            f"{args.rounds} rounds of {args.requests} requests, concurrency {args.concurrency}"
        )
        print(
            f"  {'round':>6}  {'hand-written':>12}  {'dbrouter':>8}  {'ratio':>6}"
            f"  {'CPU us/request: hand-written':>28}  {'dbrouter':>8}"
        )
        pairs = zip(comparison.hand_written, comparison.dbrouter, strict=True)
        for index, (hand, dbr) in enumerate(pairs, start=1):
            print(
                f"  {index:>6}  {hand.throughput:>12.0f}  {dbr.throughput:>8.0f}"
                f"  {dbr.throughput / hand.throughput:>6.3f}"
                f"  {hand.cpu_us:>28.1f}  {dbr.cpu_us:>8.1f}"
            )
        hand_rate, dbr_rate = comparison.throughputs
        hand_cpu, dbr_cpu = comparison.cpu_us
        print(
            f"  {'median':>6}  {hand_rate:>12.0f}  {dbr_rate:>8.0f}  {'':>6}"
            f"  {hand_cpu:>28.1f}  {dbr_cpu:>8.1f}"
        )
        print(f"  {verdict(comparison)}")
        low, high = comparison.round_ratio_range
        if high / low > NOISY_SPREAD:
            print(
                f"  noisy: per-round ratios span {low:.3f}-{high:.3f}; something else was using"
                " the CPU. Trust the CPU overhead more than the ratio, or run again."
            )
    print()
    print(
        "summary: ratio = dbrouter / hand-written median requests/s; overhead = extra time per"
        " request of dbrouter from the medians (wall clock, and CPU time of this process)"
    )
    for comparison in comparisons:
        label = f"{comparison.transport} / {comparison.workload.name}"
        print(f"  {label:<18} {verdict(comparison)}")


def verdict(comparison: Comparison) -> str:
    ratio = comparison.ratio
    status = "ok" if ratio >= TARGET_RATIO else "BELOW"
    return (
        f"ratio = {ratio:.3f} (target >= {TARGET_RATIO}: {status}); overhead "
        f"{comparison.overhead_us:+5.1f} us wall, {comparison.cpu_overhead_us:+5.1f} us CPU"
    )


def versions() -> str:
    packages = ("fastapi", "starlette", "sqlalchemy", "asyncpg", "httpx", "fastapi-dbrouter")
    found = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in packages)
    return f"Python {platform.python_version()}, {found}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--url",
        default=os.environ.get(URL_ENV),
        help=f"PostgreSQL server to use (default: ${URL_ENV}, else a throwaway server); "
        "the role must be allowed to create databases",
    )
    parser.add_argument("--rounds", type=int, default=8, help="measured rounds per side")
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not give the benchmark and the throwaway server separate CPUs",
    )
    args = parser.parse_args(argv)
    for name in ("rounds", "requests", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


async def run_on(where: Target, args: argparse.Namespace) -> list[Comparison]:
    if not where.scratch:
        return await run(where.url, args)
    async with scratch_database(where.url) as url:
        return await run(url, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(versions())
    started = time.perf_counter()
    with target(args.url) as where:
        scratch = " (in a scratch database created there)" if where.scratch else ""
        print(f"PostgreSQL: {where.url.render_as_string(hide_password=True)}{scratch}")
        pinned = None
        if args.pin and where.postmaster_pid is not None:
            pinned = pin_cpus(where.postmaster_pid)
        print(f"CPUs: {pinned or 'not pinned'}")
        comparisons = asyncio.run(run_on(where, args))
    report(comparisons, args)
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
