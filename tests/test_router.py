"""The router outside requests: routing by name, engine and session configuration,
sessions for scripts, outages, and the closed state. Real PostgreSQL throughout."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import AsyncAdaptedQueuePool

from dbrouter import (
    DatabaseRouter,
    DatabaseUnavailableError,
    RouterClosedError,
    RouterSettings,
    UnknownDatabaseError,
)
from tests.conftest import server_connections

CLOSED_PORT_URL = "postgresql://app:secret@127.0.0.1:9/app"


def two_databases(first: str, second: str) -> DatabaseRouter:
    return DatabaseRouter(
        RouterSettings(databases={"primary": {"url": first}, "reports": {"url": second}})
    )


async def test_sessions_are_routed_by_name(pg_url: str, pg_url_2: str) -> None:
    router = two_databases(pg_url, pg_url_2)
    try:
        async with router.session("primary") as session:
            primary = (await session.execute(text("SELECT current_database()"))).scalar_one()
        async with router.session("reports") as session:
            reports = (await session.execute(text("SELECT current_database()"))).scalar_one()
        async with router.session() as session:
            default = (await session.execute(text("SELECT current_database()"))).scalar_one()
    finally:
        await router.dispose()
    assert primary == make_url(pg_url).database
    assert reports == make_url(pg_url_2).database
    assert default == primary


async def test_engine_carries_the_pool_settings(pg_url: str) -> None:
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {
                    "url": pg_url,
                    "pool_size": 7,
                    "max_overflow": 3,
                    "pool_timeout": 4.5,
                    "pool_recycle": 120,
                    "pool_pre_ping": True,
                    "connect_timeout": 2,
                }
            }
        )
    )
    try:
        engine = router.engine("primary")
        pool = engine.pool
        assert isinstance(pool, AsyncAdaptedQueuePool)
        assert pool.size() == 7
        assert pool._max_overflow == 3
        assert pool._timeout == 4.5
        assert pool._recycle == 120
        assert pool._pre_ping is True
        assert pool._pool.use_lifo is True
        assert engine.url.drivername == "postgresql+asyncpg"
        async with engine.connect() as connection:
            name = await connection.scalar(text("SELECT current_setting('application_name')"))
        assert name == "dbrouter:primary"
    finally:
        await router.dispose()


async def test_default_pool_settings_reach_the_engine(pg_url: str) -> None:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": pg_url}}))
    pool = router.engine().pool
    assert isinstance(pool, AsyncAdaptedQueuePool)
    assert (pool.size(), pool._max_overflow, pool._timeout, pool._recycle) == (20, 10, 30, 3600)
    # pool_pre_ping is "idle": SQLAlchemy's ping on every checkout is off, dbrouter's own on.
    assert (pool._pre_ping, pool._pool.use_lifo) == (False, True)
    assert pool.dispatch.checkout
    await router.dispose()


async def test_pool_flags_can_be_turned_off(pg_url: str) -> None:
    router = DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": pg_url, "pool_pre_ping": False, "pool_use_lifo": False}}
        )
    )
    pool = router.engine().pool
    assert isinstance(pool, AsyncAdaptedQueuePool)
    assert (pool._pre_ping, pool._pool.use_lifo) == (False, False)
    await router.dispose()


async def test_sessionmaker_configuration(pg_url: str) -> None:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": pg_url}}))
    factory = router.sessionmaker()
    assert factory.kw["expire_on_commit"] is False
    assert factory.kw["autoflush"] is False
    assert factory.kw["bind"] is router.engine()
    await router.dispose()


async def test_session_commit_and_rollback(pg_url: str) -> None:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": pg_url}}))
    try:
        async with router.session(commit=True) as session:
            await session.execute(text("CREATE TABLE items (id int primary key)"))
            await session.execute(text("INSERT INTO items VALUES (1)"))
        with pytest.raises(RuntimeError, match="boom"):
            async with router.session(commit=True) as session:
                await session.execute(text("INSERT INTO items VALUES (2)"))
                raise RuntimeError("boom")
        async with router.session() as session:
            await session.execute(text("INSERT INTO items VALUES (3)"))
        async with router.session() as session:
            rows = (await session.execute(text("SELECT id FROM items"))).scalars().all()
    finally:
        await router.dispose()
    assert rows == [1]


async def test_unknown_names_fail_closed_and_list_the_choices(pg_url: str) -> None:
    router = two_databases(pg_url, pg_url)
    with pytest.raises(UnknownDatabaseError) as caught:
        router.engine("replica")
    assert str(caught.value) == (
        "unknown database 'replica'; configured databases: 'primary', 'reports'"
    )
    assert isinstance(caught.value, LookupError)
    with pytest.raises(UnknownDatabaseError):
        async with router.session("replica"):
            pass
    await router.dispose()


async def test_a_down_database_raises_unavailable_quickly() -> None:
    router = DatabaseRouter(
        RouterSettings(databases={"primary": {"url": CLOSED_PORT_URL, "connect_timeout": 2}})
    )
    with pytest.raises(DatabaseUnavailableError) as caught:
        async with router.session() as session:
            await session.execute(text("SELECT 1"))
    assert caught.value.name == "primary"
    assert "secret" not in str(caught.value)
    await router.dispose()


async def test_dispose_closes_every_connection_and_the_router(pg_url: str, pg_url_2: str) -> None:
    router = two_databases(pg_url, pg_url_2)
    for name in ("primary", "reports"):
        async with router.session(name) as session:
            await session.execute(text("SELECT 1"))
    assert await server_connections(pg_url) == 1
    await router.dispose()
    assert await server_connections(pg_url) == 0
    assert await server_connections(pg_url_2) == 0
    assert router.closed
    with pytest.raises(RouterClosedError):
        router.engine("primary")
    with pytest.raises(RouterClosedError):
        router.sessionmaker()
    with pytest.raises(RouterClosedError):
        async with router.session():
            pass
    await router.dispose()  # a second dispose is harmless


async def test_sqlite_is_the_embedded_default(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": url}}))
    try:
        async with router.session(commit=True) as session:
            await session.execute(text("CREATE TABLE t (x int)"))
            await session.execute(text("INSERT INTO t VALUES (42)"))
        async with router.session() as session:
            assert (await session.execute(text("SELECT x FROM t"))).scalar_one() == 42
    finally:
        await router.dispose()
    assert router.engine is not None


async def test_sqlite_in_memory() -> None:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": "sqlite://"}}))
    async with router.session(commit=True) as session:
        await session.execute(text("CREATE TABLE t (x int)"))
    async with router.session() as session:
        assert (await session.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0
    await router.dispose()


async def test_from_env(monkeypatch: pytest.MonkeyPatch, pg_url: str) -> None:
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__URL", pg_url)
    router = DatabaseRouter.from_env()
    async with router.session() as session:
        assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
    await router.dispose()


async def test_the_router_is_an_async_context_manager(pg_url: str) -> None:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": pg_url}}))
    async with router, router.session() as session:
        assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
    assert router.closed
    assert await server_connections(pg_url) == 0
