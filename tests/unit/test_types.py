"""The types of the public API, as a type checker sees them (``assert_type``, checked by
mypy over the test suite), and the same calls made on real routers at run time."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

from fastapi import APIRouter
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dbrouter import (
    DatabaseHealth,
    DatabaseRouter,
    DatabaseSettings,
    DatabaseUnavailableError,
    HealthReport,
    PoolStats,
    RouterSettings,
    TenancySettings,
    TenantSettings,
    UnknownDatabaseError,
    current_tenant,
    get_db,
    get_tenant,
    get_tenant_db,
)
from dbrouter.databases import Database
from dbrouter.events import EngineBuilt, EngineDisposed, EventBus
from dbrouter.lifecycle import State
from dbrouter.replicas import ReplicaMember, ReplicaSet, ReplicaStatus

if sys.version_info >= (3, 11):
    from typing import assert_type
else:
    from typing_extensions import assert_type

UNREACHABLE = "postgresql://app@127.0.0.1:1/app"  # never connected to


def sqlite_router() -> DatabaseRouter:
    return DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": "sqlite://"},
                "replica": {"url": "sqlite://", "replica_of": "primary"},
            },
            tenancy={"tenants": {"acme": {"url": "sqlite://"}}},
        )
    )


async def test_the_router_api() -> None:
    async with sqlite_router() as router:
        engine = assert_type(router.engine(), AsyncEngine)
        assert isinstance(engine, AsyncEngine)
        assert_type(router.engine("replica"), AsyncEngine)
        maker = assert_type(router.sessionmaker(), async_sessionmaker[AsyncSession])
        assert isinstance(maker, async_sessionmaker)
        assert_type(router.database("primary"), Database)

        manager: AbstractAsyncContextManager[AsyncSession] = router.session()
        async with manager as session:
            assert_type(session, AsyncSession)
            assert isinstance(session, AsyncSession)
        async with router.session("replica", commit=False) as session:
            assert_type(session, AsyncSession)
        async with router.tenant_session("acme", commit=True) as session:
            assert_type(session, AsyncSession)
            assert isinstance(session, AsyncSession)
            assert_type(current_tenant(), str | None)
            assert current_tenant() == "acme"

        report = assert_type(await router.check(), HealthReport)
        assert isinstance(report, HealthReport)
        assert_type(report.ok, bool)
        assert_type(report.as_dict(), dict[str, Any])
        health = assert_type(report.databases["primary"], DatabaseHealth)
        assert_type(health.status, Literal["up", "down"])
        assert_type(health.latency_ms, float | None)
        assert_type(health.error, str | None)
        assert_type(health.pool, PoolStats)
        assert_type(health.pool.in_use, int)
        assert_type(health.replicas, tuple[ReplicaStatus, ...])
        assert health.status == "up"

        tenants = assert_type(await router.list_tenants(), list[str])
        assert tenants == ["acme"]
        engines = assert_type(router.tenant_engines(), dict[str, AsyncEngine])
        assert isinstance(engines["acme"], AsyncEngine)

        assert_type(router.events, EventBus)
        assert_type(router.state, State)
        assert router.state is State.OPEN
        assert_type(router.settings, RouterSettings)
        assert_type(router.names, frozenset[str])
        assert_type(router.open_connections, int | None)
        assert_type(router.closed, bool)
        assert_type(router.has_replicas, bool)
        assert_type(router.draining_engines, int)
        assert isinstance(assert_type(router.health_router(), APIRouter), APIRouter)
        assert_type(router.lifespan(object()), AbstractAsyncContextManager[dict[str, Any]])
    assert_type(await router.dispose(), None)


async def test_a_router_from_the_environment() -> None:
    router = assert_type(
        DatabaseRouter.from_env(databases={"primary": {"url": "sqlite://"}}), DatabaseRouter
    )
    assert isinstance(router, DatabaseRouter)
    await router.dispose()


async def test_the_replica_set_api() -> None:
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": UNREACHABLE},
                "replica": {"url": UNREACHABLE, "replica_of": "primary"},
            }
        )
    )
    try:
        replicas = assert_type(router.replica_set("replica"), ReplicaSet)
        assert isinstance(replicas, ReplicaSet)
        member = assert_type(replicas.choose(), ReplicaMember | None)
        assert member is not None
        assert_type(replicas.choose(min_lsn=0), ReplicaMember | None)
        assert_type(member.name, str)
        assert_type(member.in_rotation, bool)
        assert_type(member.reason, str | None)
        assert_type(member.lag_seconds, float | None)
        assert_type(member.replay_lsn, int | None)
        assert_type(replicas.members, tuple[ReplicaMember, ...])
        assert_type(replicas.snapshot(), tuple[ReplicaStatus, ...])
        assert_type(replicas.primary_lsn, int | None)
        assert_type(replicas.running, bool)
    finally:
        await router.dispose()


def test_the_dependencies() -> None:
    assert_type(get_db(), Callable[..., Any])
    assert_type(get_db("replica", commit=True), Callable[..., Any])
    assert_type(get_tenant_db(commit=True), Callable[..., Any])
    assert_type(get_tenant(), Callable[..., Any])
    assert get_db("replica") is get_db("replica")


def test_the_settings_fields() -> None:
    settings = RouterSettings(
        databases={
            "x": {"url": "postgresql://app:secret@db/app"},
            "y": {"url": "postgresql://app:secret@replica/app", "replica_of": "x"},
        },
        default_database="x",
        tenancy={"url_template": "postgresql://app:secret@db/tenant_{tenant}"},
    )
    database = assert_type(settings.databases["x"], DatabaseSettings)
    url = assert_type(database.url, URL)
    assert isinstance(url, URL)
    assert url.drivername == "postgresql+asyncpg"
    assert_type(database.pool_size, int)
    assert_type(database.pool_timeout, float)
    assert_type(database.connect_timeout, float)
    assert_type(database.pool_pre_ping, bool | Literal["idle"])
    assert_type(database.pre_ping_idle_after, float)
    assert_type(database.replica_of, str | None)
    replica = settings.databases["y"]
    assert_type(replica.fallback, Literal["primary", "error"])
    assert_type(replica.balance, Literal["round_robin", "least_busy", "weighted"])
    assert_type(replica.max_lag, float)
    assert_type(settings.default_database, str)
    assert_type(settings.max_connections, int | None)
    tenancy = assert_type(settings.tenancy, TenancySettings | None)
    assert tenancy is not None
    assert_type(tenancy.strategy, Literal["database", "schema"])
    template = assert_type(tenancy.url_template, URL | None)
    assert isinstance(template, URL)
    assert_type(tenancy.tenants, dict[str, TenantSettings])
    assert_type(TenantSettings().url, URL | None)


def test_the_event_bus() -> None:
    bus = EventBus()
    built: list[EngineBuilt] = []

    def on_built(event: EngineBuilt) -> None:
        built.append(assert_type(event, EngineBuilt))

    def on_disposed(event: EngineDisposed) -> None:
        pass

    unsubscribe = assert_type(bus.subscribe(EngineBuilt, on_built), Callable[[], None])
    # A handler for another kind is refused by the type checker (the ignore would be
    # reported unused otherwise).
    bus.subscribe(EngineBuilt, on_disposed)()  # type: ignore[arg-type]
    bus.emit(EngineBuilt("primary", "database"))
    unsubscribe()
    assert built == [EngineBuilt("primary", "database")]


def test_the_errors() -> None:
    unknown = UnknownDatabaseError("nope", ["primary"])
    assert_type(unknown.name, str)
    assert_type(unknown.configured, tuple[str, ...])
    unavailable = DatabaseUnavailableError("primary", "unreachable")
    assert_type(unavailable.reason, str)
    assert_type(unavailable.retry_after, int)
