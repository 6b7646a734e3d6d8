"""``pool_pre_ping: idle`` on real servers: the keys and their refusals, a ping only for a
connection idle too long, connections the server ended replaced without one, and a server
restart under load that costs no request started after the server is back."""

# No ``from __future__ import annotations``: FastAPI resolves the endpoint annotations.

import asyncio
import time
from collections.abc import Callable
from typing import Annotated, Any

import asyncpg
import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from dbrouter import ConfigurationError, DatabaseRouter, DatabaseSettings, RouterSettings, get_db
from tests.conftest import serve
from tests.support.postgres import PostgresServer

Session = Annotated[AsyncSession, Depends(get_db())]


# ---- the keys --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "mode"), [("idle", "idle"), ("IDLE", "idle"), ("true", True), ("off", False)]
)
def test_pool_pre_ping_takes_true_false_or_idle(given: str, mode: object) -> None:
    settings = DatabaseSettings(url="postgresql://app@db/app", pool_pre_ping=given)
    assert settings.pool_pre_ping == mode


def test_pool_pre_ping_idle_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__URL", "postgresql://app@db/app")
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__POOL_PRE_PING", "idle")
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__PRE_PING_IDLE_AFTER", "2.5")
    primary = RouterSettings().databases["primary"]
    assert (primary.pool_pre_ping, primary.pre_ping_idle_after) == ("idle", 2.5)


def test_an_unknown_pre_ping_mode_names_the_choices() -> None:
    with pytest.raises(ConfigurationError) as raised:
        DatabaseSettings(url="postgresql://app:secret@db/app", pool_pre_ping="sometimes")
    assert raised.value.problems == (("pool_pre_ping", 'must be true, false or "idle"'),)
    assert "secret" not in str(raised.value)


@pytest.mark.parametrize("mode", [True, False])
def test_pre_ping_idle_after_needs_pool_pre_ping_idle(mode: bool) -> None:
    with pytest.raises(ConfigurationError) as raised:
        DatabaseSettings(url="postgresql://app@db/app", pool_pre_ping=mode, pre_ping_idle_after=1)
    ((key, message),) = raised.value.problems
    assert key == "pre_ping_idle_after"
    assert message == (
        f"only applies with pool_pre_ping: idle (pool_pre_ping is {str(mode).lower()}); "
        "set pool_pre_ping to idle, or remove it"
    )


@pytest.mark.parametrize("seconds", [0, -1])
def test_pre_ping_idle_after_is_positive(seconds: float) -> None:
    with pytest.raises(ConfigurationError, match="pre_ping_idle_after"):
        DatabaseSettings(
            url="postgresql://app@db/app", pool_pre_ping="idle", pre_ping_idle_after=seconds
        )


# ---- pings -----------------------------------------------------------------------------


def counting_pings(router: DatabaseRouter) -> list[float]:
    """The times of every ping the primary's pool sends from now on."""
    dialect = router.engine().sync_engine.dialect
    ping = dialect.do_ping
    pings: list[float] = []

    def counted(dbapi_connection: Any) -> bool:
        pings.append(time.monotonic())
        return ping(dbapi_connection)

    dialect.do_ping = counted  # type: ignore[method-assign]
    return pings


async def backend_pid(router: DatabaseRouter) -> int:
    async with router.session() as session:
        return int(await session.scalar(text("SELECT pg_backend_pid()")) or 0)


def on(url: str, driver: str) -> str:
    """*url* with *driver*."""
    return make_url(url).set(drivername=f"postgresql+{driver}").render_as_string(False)


def idle_router(url: str, **pool: Any) -> DatabaseRouter:
    return DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": url, "pool_pre_ping": "idle", "pool_timeout": 2, **pool}}
        )
    )


async def test_only_a_connection_idle_too_long_is_pinged(pg_url: str) -> None:
    router = idle_router(pg_url, pool_size=1, max_overflow=0, pre_ping_idle_after=0.3)
    async with router:
        pings = counting_pings(router)
        first = await backend_pid(router)  # a new connection: no ping
        for _ in range(5):
            assert await backend_pid(router) == first
        assert pings == []
        await asyncio.sleep(0.4)
        assert await backend_pid(router) == first
        assert len(pings) == 1
        assert await backend_pid(router) == first
        assert len(pings) == 1


async def test_pool_pre_ping_true_pings_every_checkout(pg_url: str) -> None:
    router = DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": pg_url, "pool_size": 1, "pool_pre_ping": True}}
        )
    )
    async with router:
        pings = counting_pings(router)
        for _ in range(4):
            await backend_pid(router)
        assert len(pings) == 3  # all but the first, on a new connection


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_connections_the_server_ended_are_replaced(pg_url: str, driver: str) -> None:
    router = idle_router(on(pg_url, driver), pool_size=3, max_overflow=0, pre_ping_idle_after=60)
    async with router:
        pings = counting_pings(router)
        pids = set(await asyncio.gather(*(_slow_pid(router) for _ in range(3))))
        assert len(pids) == 3
        admin = await asyncpg.connect(pg_url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", sorted(pids)
            )
        finally:
            await admin.close()
        await asyncio.sleep(0.2)  # the server's goodbyes reach the idle connections
        after = set(await asyncio.gather(*(_slow_pid(router) for _ in range(3))))
        assert len(after) == 3
        assert not after & pids
        # asyncpg knows its connections were closed; psycopg finds the goodbyes waiting on
        # the sockets and pings those.
        assert len(pings) == (0 if driver == "asyncpg" else 3)


async def _slow_pid(router: DatabaseRouter) -> int:
    async with router.session() as session:
        await session.execute(text("SELECT pg_sleep(0.05)"))
        return int(await session.scalar(text("SELECT pg_backend_pid()")) or 0)


# ---- a restart under load --------------------------------------------------------------


def restart_app(url: str) -> FastAPI:
    router = idle_router(url, pool_size=4, max_overflow=0, connect_timeout=2)
    app = FastAPI(lifespan=router.lifespan)

    @app.get("/read")
    async def read(db: Session) -> int:
        await db.execute(text("SELECT pg_sleep(0.01)"))
        return int(await db.scalar(text("SELECT 1")) or 0)

    return app


Outcome = tuple[float, float, int]
"""When a request started and ended (monotonic), and its status."""


async def load(client: httpx.AsyncClient, stop: asyncio.Event, outcomes: list[Outcome]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        status = (await client.get("/read")).status_code
        outcomes.append((started, time.monotonic(), status))
        if status != 200:
            await asyncio.sleep(0.02)


def restart(server: PostgresServer) -> None:
    server.restart("fast")


def crash(server: PostgresServer) -> None:
    server.stop("immediate")
    server.start()


@pytest.mark.faults
@pytest.mark.parametrize(
    ("driver", "cycle"),
    [("asyncpg", restart), ("asyncpg", crash), ("psycopg", restart)],
    ids=["asyncpg-restart", "asyncpg-crash", "psycopg-restart"],
)
async def test_every_request_started_after_the_server_is_back_succeeds(
    own_server: PostgresServer, driver: str, cycle: Callable[[PostgresServer], None]
) -> None:
    url = on(own_server.create_database("app"), driver)
    outcomes: list[Outcome] = []
    async with serve(restart_app(url)) as client:
        stop = asyncio.Event()
        workers = [asyncio.create_task(load(client, stop, outcomes)) for _ in range(8)]
        await asyncio.sleep(0.5)
        begun = time.monotonic()
        await asyncio.to_thread(cycle, own_server)
        back = time.monotonic()  # the server accepts connections again
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*workers)
        # And with no request in flight: nothing met the restart before these do.
        await asyncio.gather(*(client.get("/read") for _ in range(8)))
        await asyncio.to_thread(cycle, own_server)
        quiet = await asyncio.gather(*(client.get("/read") for _ in range(8)))
    assert [response.status_code for response in quiet] == [200] * 8
    before = [status for _, ended, status in outcomes if ended < begun]
    during = [status for started, ended, status in outcomes if ended >= begun and started < back]
    after = [status for started, _, status in outcomes if started >= back]
    assert set(before) == {200}
    assert set(during) <= {200, 503}  # cut off by the restart: these may fail
    assert len(after) > 50
    assert set(after) == {200}, f"{after.count(503)} of {len(after)} failed after the restart"
