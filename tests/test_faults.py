"""Faults the core survives, each against a throwaway server the test controls: a server
restart under load, clients that go away mid-query, and shutdown under load."""

# No ``from __future__ import annotations``: FastAPI resolves the endpoint annotations.

import asyncio
import gc
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dbrouter import DatabaseRouter, RouterSettings, get_db
from dbrouter.events import DatabaseRecovered, DatabaseUnavailable
from tests.conftest import serve, server_connections
from tests.support.postgres import CLIENT_BACKENDS, PostgresServer

pytestmark = pytest.mark.faults

Session = Annotated[AsyncSession, Depends(get_db("primary"))]
Committed = Annotated[AsyncSession, Depends(get_db("primary", commit=True))]


def build(url: str, **pool: object) -> tuple[DatabaseRouter, FastAPI]:
    router = DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": url, "connect_timeout": 2, "pool_timeout": 2, **pool}}
        )
    )
    app = FastAPI(lifespan=router.lifespan)

    @app.get("/read")
    async def read(db: Session) -> int:
        await db.execute(text("SELECT pg_sleep(0.02)"))
        return int(await db.scalar(text("SELECT count(*) FROM events")) or 0)

    @app.post("/write")
    async def write(db: Committed) -> str:
        await db.execute(text("INSERT INTO events DEFAULT VALUES"))
        await db.execute(text("SELECT pg_sleep(0.02)"))
        return "ok"

    @app.get("/slow")
    async def slow(db: Session, seconds: float) -> str:
        await db.execute(text("INSERT INTO events DEFAULT VALUES"))
        await db.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
        return "done"

    return router, app


def prepare(server: PostgresServer) -> str:
    url = server.create_database("app")
    server.execute("CREATE TABLE events (id serial PRIMARY KEY)", database="app")
    return url


async def lingering(server: PostgresServer) -> list[tuple[str, ...]]:
    """Sessions of the app's database that are busy or stuck in a transaction."""
    rows = await asyncio.to_thread(
        server.query,
        f"SELECT state, query FROM {CLIENT_BACKENDS} AND datname = 'app' "
        "AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')",
    )
    return rows


async def load(client: httpx.AsyncClient, stop: asyncio.Event, statuses: Counter[int]) -> None:
    while not stop.is_set():
        response = (
            await client.post("/write") if statuses.total() % 3 else await client.get("/read")
        )
        statuses[response.status_code] += 1
        if response.status_code != 200:
            await asyncio.sleep(0.05)


async def test_a_server_restart_costs_503s_and_nothing_after(own_server: PostgresServer) -> None:
    router, app = build(prepare(own_server), pool_size=4, max_overflow=0)
    async with serve(app) as client:
        stop = asyncio.Event()
        during: Counter[int] = Counter()
        workers = [asyncio.create_task(load(client, stop, during)) for _ in range(8)]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(own_server.restart, "fast")
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*workers)
        assert set(during) <= {200, 503}, during
        assert during[200] > 0

        # Every pooled connection predates the restart: each must be detected, not served.
        after: Counter[int] = Counter()
        for _ in range(5):
            responses = await asyncio.gather(*(client.get("/read") for _ in range(8)))
            after.update(response.status_code for response in responses)
        assert after == Counter({200: 40})
    assert await lingering(own_server) == []
    assert router.closed
    assert await server_connections(own_server.url("app")) == 0


async def test_a_crash_under_load_recovers(own_server: PostgresServer) -> None:
    router, app = build(prepare(own_server), pool_size=4, max_overflow=0)
    async with serve(app) as client:
        stop = asyncio.Event()
        during: Counter[int] = Counter()
        workers = [asyncio.create_task(load(client, stop, during)) for _ in range(8)]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(own_server.stop, "immediate")
        await asyncio.sleep(0.5)
        await asyncio.to_thread(own_server.start)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*workers)
        assert set(during) <= {200, 503}, during
        responses = await asyncio.gather(*(client.get("/read") for _ in range(20)))
        assert [response.status_code for response in responses] == [200] * 20
    assert router.closed
    assert await server_connections(own_server.url("app")) == 0


async def test_cancelled_requests_leave_nothing_checked_out(own_server: PostgresServer) -> None:
    # In-process, a client that gives up cancels the request task mid-query.
    router, app = build(prepare(own_server), pool_size=3, max_overflow=0)
    async with serve(app) as client:
        for _ in range(3):
            tasks = [
                asyncio.create_task(client.get("/slow", params={"seconds": 5})) for _ in range(3)
            ]
            await asyncio.sleep(0.3)
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(result, asyncio.CancelledError) for result in results)
        gc.collect()
        assert router.engine().pool.checkedout() == 0  # type: ignore[attr-defined]
        assert await lingering(own_server) == []
        # The pool is whole again: three concurrent requests get three connections.
        responses = await asyncio.gather(*(client.get("/read") for _ in range(3)))
        assert [response.status_code for response in responses] == [200] * 3
    gc.collect()
    assert await server_connections(own_server.url("app")) == 0


def cancel_on_disconnect(app: ASGIApp) -> ASGIApp:
    """*app* cancelled when its client goes away, as some ASGI servers and timeout
    middlewares do (uvicorn itself lets the endpoint run on)."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        inbox: asyncio.Queue[Message] = asyncio.Queue()

        async def run() -> None:
            await app(scope, inbox.get, send)

        request = asyncio.create_task(run())

        async def watch() -> None:
            while True:
                message = await receive()
                await inbox.put(message)
                if message["type"] == "http.disconnect":
                    request.cancel()
                    return

        watcher = asyncio.create_task(watch())
        try:
            await asyncio.wait({request})
        finally:
            watcher.cancel()
        if not request.cancelled():
            request.result()

    return wrapped


@asynccontextmanager
async def uvicorn_server(app: ASGIApp) -> AsyncIterator[tuple[uvicorn.Server, str]]:
    """*app* served by a real uvicorn on a loopback port, in this event loop."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.mark.parametrize("cancelled", [False, True], ids=["runs-on", "cancelled"])
async def test_clients_that_disconnect_mid_query(
    own_server: PostgresServer, cancelled: bool
) -> None:
    url = prepare(own_server)
    router, app = build(url, pool_size=3, max_overflow=0)
    served = cancel_on_disconnect(app) if cancelled else app
    async with uvicorn_server(served) as (_, base), httpx.AsyncClient(base_url=base) as client:
        for _ in range(3):
            with pytest.raises(httpx.ReadTimeout):
                await client.get("/slow", params={"seconds": 0.8}, timeout=0.2)
        if cancelled:
            await asyncio.sleep(0.2)
            # Cancelled in the middle of pg_sleep: the connection is back (or discarded).
            assert router.engine().pool.checkedout() == 0  # type: ignore[attr-defined]
        # The server notices a discarded connection once pg_sleep ends.
        await asyncio.sleep(1.2)
        assert router.engine().pool.checkedout() == 0  # type: ignore[attr-defined]
        assert await lingering(own_server) == []
        # /slow never commits: its rows are gone with its transaction.
        assert (await client.get("/read")).json() == 0
    gc.collect()
    assert await server_connections(url) == 0


async def test_shutdown_under_load_leaves_no_connection(own_server: PostgresServer) -> None:
    url = prepare(own_server)
    router, app = build(url, pool_size=5, max_overflow=5)
    statuses: Counter[int] = Counter()
    async with uvicorn_server(app) as (server, base), httpx.AsyncClient(base_url=base) as client:
        stop = asyncio.Event()
        workers = [asyncio.create_task(load(client, stop, statuses)) for _ in range(10)]
        await asyncio.sleep(0.7)
        assert await server_connections(url) >= 1
        server.should_exit = True
        stop.set()
        # Requests refused once uvicorn stops listening end their worker; that is expected.
        results = await asyncio.gather(*workers, return_exceptions=True)
    assert all(result is None or isinstance(result, httpx.TransportError) for result in results)
    assert statuses[200] > 0
    assert set(statuses) == {200}, statuses
    assert router.closed
    gc.collect()
    assert await server_connections(url) == 0


async def test_a_database_going_away_is_logged_once_and_its_return_once(
    own_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dbrouter")
    router, app = build(prepare(own_server), pool_size=2, max_overflow=0)
    changes: list[object] = []
    router.events.subscribe(DatabaseUnavailable, changes.append)
    router.events.subscribe(DatabaseRecovered, changes.append)
    async with serve(app) as client:
        assert (await client.get("/read")).status_code == 200
        await asyncio.to_thread(own_server.stop, "fast")
        down = [await client.get("/read") for _ in range(6)]
        health = await client.get("/health/databases")
        await asyncio.to_thread(own_server.start)
        back = [await client.get("/read") for _ in range(3)]
    assert [response.status_code for response in down] == [503] * 6
    assert health.status_code == 404  # not mounted: the check ran through the requests only
    assert [response.status_code for response in back] == [200] * 3
    assert [type(change) for change in changes] == [DatabaseUnavailable, DatabaseRecovered]
    lines = [
        (record.levelname, record.getMessage())
        for record in caplog.records
        if "unavailable" in record.getMessage() or "available again" in record.getMessage()
    ]
    assert len(lines) == 2, lines
    (warned, warning), (informed, recovered) = lines
    assert (warned, informed) == ("WARNING", "INFO")
    assert warning.startswith("dbrouter: database 'primary' is unavailable: ")
    assert recovered == "dbrouter: database 'primary' is available again"
    assert not any(record.exc_info for record in caplog.records if record.levelno >= 30)


async def test_the_health_check_reports_state_changes_too(
    own_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dbrouter")
    router, _ = build(prepare(own_server))
    changes: list[str] = []
    router.events.subscribe(DatabaseUnavailable, lambda event: changes.append(event.reason))
    router.events.subscribe(DatabaseRecovered, lambda event: changes.append("back"))
    async with router:
        assert (await router.check()).ok
        await asyncio.to_thread(own_server.stop, "fast")
        for _ in range(3):
            assert not (await router.check()).ok
        await asyncio.to_thread(own_server.start)
        assert (await router.check()).ok
    assert changes == ["unreachable", "back"]
