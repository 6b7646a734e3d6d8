"""Timeouts and server settings on real servers: ``statement_timeout``,
``idle_in_transaction_timeout`` and ``server_settings``, for databases and tenants, with
asyncpg and psycopg, directly and through PgBouncer."""

# No ``from __future__ import annotations``: FastAPI resolves the endpoint annotations.

import asyncio
import time
from collections.abc import Iterator
from typing import Annotated, Any

import asyncpg
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from dbrouter import DatabaseRouter, DatabaseUnavailableError, RouterSettings, get_db
from tests.conftest import serve, server_connections
from tests.support.pgbouncer import running_pgbouncer
from tests.support.postgres import CLIENT_BACKENDS
from tests.support.tenants import tenant_databases

DRIVERS = ["asyncpg", "psycopg"]
Session = Annotated[AsyncSession, Depends(get_db("primary"))]
NOTE = "100% it's a \\ 'quoted'\tvalue"
"""A value of a parameter of our own, with what quoting and escaping could get wrong."""


def with_driver(url: str, driver: str) -> str:
    """*url* with the async *driver* named."""
    return (
        make_url(url).set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
    )


def counting_invalidations(router: DatabaseRouter, name: str = "primary") -> list[str]:
    """A list that grows by one entry for each connection of *name*'s pool invalidated."""
    invalidated: list[str] = []
    engine = router.engine(name).sync_engine
    event.listen(engine, "invalidate", lambda *args: invalidated.append("hard"))
    event.listen(engine, "soft_invalidate", lambda *args: invalidated.append("soft"))
    return invalidated


def timeout_app(router: DatabaseRouter) -> FastAPI:
    app = FastAPI(lifespan=router.lifespan)

    @app.get("/slow")
    async def slow(db: Session) -> str:
        await db.execute(text("SELECT pg_sleep(10)"))
        return "finished"

    @app.get("/fast")
    async def fast(db: Session) -> int:
        await db.execute(text("SELECT pg_sleep(0.01)"))
        return int(await db.scalar(text("SELECT pg_backend_pid()")) or 0)

    @app.get("/idle")
    async def idle(db: Session, seconds: float) -> int:
        pid = int(await db.scalar(text("SELECT pg_backend_pid()")) or 0)
        await asyncio.sleep(seconds)  # the transaction stays open, idle
        await db.execute(text("SELECT 1"))
        return pid

    return app


# -- statement_timeout --------------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_statement_past_statement_timeout_is_a_503_and_others_are_served(
    pg_url: str, driver: str
) -> None:
    settings = RouterSettings(
        databases={
            "primary": {
                "url": with_driver(pg_url, driver),
                "statement_timeout": 0.5,
                "pool_size": 4,
                "max_overflow": 0,
            }
        }
    )
    router = DatabaseRouter(settings)
    app = timeout_app(router)
    async with serve(app) as client:
        invalidated = counting_invalidations(router)
        pool = router.engine().sync_engine.pool
        started = time.monotonic()

        async def slow() -> tuple[int, str | None, float]:
            response = await client.get("/slow")
            return response.status_code, response.headers.get("Retry-After"), time.monotonic()

        slow_calls = [asyncio.create_task(slow()) for _ in range(3)]
        fast_calls = [asyncio.create_task(client.get("/fast")) for _ in range(40)]
        slow_answers = await asyncio.gather(*slow_calls)
        fast_answers = await asyncio.gather(*fast_calls)

        for status, retry_after, finished in slow_answers:
            assert status == 503
            assert retry_after is not None
            assert retry_after.isdigit()
            assert finished - started < 5, "cancelled by the server, not left to run 10 s"
        assert [response.status_code for response in fast_answers] == [200] * 40
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
        # The cancelled statements' connections went back to the pool whole: none was
        # replaced, and the server still has exactly the pool's connections.
        assert invalidated == []
        assert await server_connections(pg_url) == pool.checkedin()  # type: ignore[attr-defined]
        after = await asyncio.gather(*(client.get("/fast") for _ in range(8)))
        assert [response.status_code for response in after] == [200] * 8
        assert invalidated == []
        async with router.session() as session:
            assert await session.scalar(text("SHOW statement_timeout")) == "500ms"


async def test_a_cancelled_statement_outside_requests_is_unavailable(pg_url: str) -> None:
    router = DatabaseRouter(
        RouterSettings(databases={"primary": {"url": pg_url, "statement_timeout": 0.2}})
    )
    async with router:
        with pytest.raises(DatabaseUnavailableError, match="cancelled a statement") as caught:
            async with router.session() as session:
                await session.execute(text("SELECT pg_sleep(5)"))
        assert getattr(caught.value.__cause__, "orig", None) is not None
        async with router.session() as session:
            assert await session.scalar(text("SELECT 1")) == 1


# -- idle_in_transaction_timeout ----------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
async def test_idle_in_transaction_timeout_ends_the_session(pg_url: str, driver: str) -> None:
    settings = RouterSettings(
        databases={
            "primary": {
                "url": with_driver(pg_url, driver),
                "idle_in_transaction_timeout": 0.3,
                "pool_size": 1,
                "max_overflow": 0,
            }
        }
    )
    router = DatabaseRouter(settings)
    app = timeout_app(router)
    async with serve(app) as client:
        first = await client.get("/fast")
        assert first.status_code == 200
        held = await client.get("/idle", params={"seconds": 1.5})
        assert held.status_code == 503
        assert first.json() not in await backend_pids(pg_url), "the server ended it"
        # The pool's only connection was the dead one: the next request gets a new one.
        after = await client.get("/fast")
        assert after.status_code == 200
        assert after.json() != first.json()
        quick = await client.get("/idle", params={"seconds": 0.05})
        assert quick.status_code == 200


async def backend_pids(url: str) -> set[int]:
    """The server processes serving *url*'s database now."""
    connection = await asyncpg.connect(
        make_url(url).set(database="postgres").render_as_string(hide_password=False)
    )
    try:
        rows = await connection.fetch(
            f"SELECT pid FROM {CLIENT_BACKENDS} AND datname = $1", make_url(url).database
        )
    finally:
        await connection.close()
    return {row["pid"] for row in rows}


# -- server_settings ----------------------------------------------------------------------


async def shown(router: DatabaseRouter, *names: str, tenant: str | None = None) -> list[str]:
    """``SHOW`` of each of *names* in a session on *router*'s default database or *tenant*."""
    session_of = router.session() if tenant is None else router.tenant_session(tenant)
    async with session_of as session:
        return [str(await session.scalar(text(f"SHOW {name}"))) for name in names]


@pytest.mark.parametrize("driver", DRIVERS)
async def test_server_settings_are_set_on_every_connection(pg_url: str, driver: str) -> None:
    settings = RouterSettings(
        databases={
            "primary": {
                "url": with_driver(pg_url, driver),
                "server_settings": {
                    "lock_timeout": "1234ms",
                    "jit": False,
                    "application_name": "billing api",
                    "work_mem": "8MB",
                    "dbrouter.note": NOTE,
                },
                "statement_timeout": 2.5,
                "idle_in_transaction_timeout": 60,
            }
        }
    )
    router = DatabaseRouter(settings)
    async with router:
        names = (
            "lock_timeout",
            "jit",
            "application_name",
            "work_mem",
            "statement_timeout",
            "idle_in_transaction_session_timeout",
            "dbrouter.note",
        )
        answers = await asyncio.gather(*(shown(router, *names) for _ in range(5)))
        expected = ["1234ms", "off", "billing api", "8MB", "2500ms", "1min", NOTE]
        assert answers == [expected] * 5
        assert router.engine().sync_engine.pool.checkedin() >= 2  # type: ignore[attr-defined]


async def test_tenants_inherit_connection_options_unless_they_override_them(
    postgres_admin_url: str, pg_url: str
) -> None:
    async with tenant_databases(postgres_admin_url, ["acme", "globex"]) as tenants:
        settings = RouterSettings(
            databases={"primary": {"url": pg_url}},
            tenancy={
                "url_template": tenants.url_template,
                "statement_timeout": 1,
                "server_settings": {"lock_timeout": "1s", "jit": "off"},
                "tenants": {
                    "acme": {
                        "url": tenants.urls["acme"],
                        "statement_timeout": 2,
                        "server_settings": {"lock_timeout": "2s"},
                    }
                },
            },
        )
        router = DatabaseRouter(settings)
        async with router:
            names = ("statement_timeout", "lock_timeout", "jit")
            assert await shown(router, *names, tenant="acme") == ["2s", "2s", "off"]
            assert await shown(router, *names, tenant="globex") == ["1s", "1s", "off"]
            assert await shown(router, *names) == ["0", "0", "on"]
            with pytest.raises(DatabaseUnavailableError, match="cancelled a statement"):
                async with router.tenant_session("globex") as session:
                    await session.execute(text("SELECT pg_sleep(3)"))
            async with router.tenant_session("acme") as session:
                await session.execute(text("SELECT pg_sleep(1.2)"))


# -- through PgBouncer --------------------------------------------------------------------


@pytest.fixture(scope="module")
def pgbouncer(postgres_admin_url: str) -> Iterator[str]:
    """PgBouncer in transaction mode, three server connections per database."""
    with running_pgbouncer(postgres_admin_url) as url:
        yield url


def bounced(pgbouncer: str, url: str, driver: str) -> str:
    """*url*'s database through *pgbouncer*, with *driver*."""
    bouncer = make_url(pgbouncer)
    return with_driver(
        make_url(url)
        .set(host=bouncer.host, port=bouncer.port)
        .render_as_string(hide_password=False),
        driver,
    )


@pytest.mark.parametrize("driver", DRIVERS)
async def test_options_through_pgbouncer_hold_for_every_transaction(
    pgbouncer: str, pg_url: str, driver: str
) -> None:
    url = bounced(pgbouncer, pg_url, driver)
    options: dict[str, Any] = {
        "url": url,
        "pgbouncer": True,
        "pool_size": 10,
        "max_overflow": 0,
        "statement_timeout": 0.4,
        "server_settings": {
            "lock_timeout": "3s",
            "application_name": "through bouncer",
            "dbrouter.note": NOTE,
        },
    }
    router = DatabaseRouter(
        RouterSettings(
            databases={"primary": options, "replica": {**options, "replica_of": "primary"}}
        )
    )
    names = ("lock_timeout", "statement_timeout", "application_name", "dbrouter.note")
    async with router:
        # Ten client connections over three server connections: every transaction gets
        # the settings, whichever server connection it lands on.
        answers = await asyncio.gather(*(shown(router, *names) for _ in range(30)))
        assert answers == [["3s", "400ms", "through bouncer", NOTE]] * 30
        async with router.session("replica") as session:
            assert await session.scalar(text("SHOW transaction_read_only")) == "on"
            assert await session.scalar(text("SHOW lock_timeout")) == "3s"
        with pytest.raises(DatabaseUnavailableError, match="cancelled a statement"):
            async with router.session() as session:
                await session.execute(text("SELECT pg_sleep(5)"))
        async with router.session() as session:
            assert await session.scalar(text("SELECT 1")) == 1
        # AUTOCOMMIT opens no transaction to set them in (see docs/configuration.md).
        async with router.engine().connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            assert await autocommit.scalar(text("SHOW lock_timeout")) == "0"


@pytest.mark.parametrize("driver", DRIVERS)
async def test_idle_in_transaction_timeout_through_pgbouncer(
    pgbouncer: str, pg_url: str, driver: str
) -> None:
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {
                    "url": bounced(pgbouncer, pg_url, driver),
                    "pgbouncer": True,
                    "idle_in_transaction_timeout": 0.3,
                    "pool_size": 1,
                    "max_overflow": 0,
                }
            }
        )
    )
    app = timeout_app(router)
    async with serve(app) as client:
        held = await client.get("/idle", params={"seconds": 1.5})
        assert held.status_code == 503
        after = await client.get("/fast")
        assert after.status_code == 200
        quick = await client.get("/idle", params={"seconds": 0.05})
        assert quick.status_code == 200
