"""`DatabaseRouter`: the one object an application holds; every database goes through it."""

from __future__ import annotations

import dataclasses
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from .budget import ConnectionBudget
from .databases import Database, SessionFactory
from .engines import EngineFactory
from .errors import ConfigurationError, TenantError, UnknownDatabaseError
from .events import EventBus
from .health import HealthReport, check_databases
from .lending import LentSession, TenantLentSession
from .lifecycle import Lifecycle, State
from .logs import log_events
from .metrics import MetricsSnapshot, RouterMetrics
from .migrations import MISSING_EXTRA
from .registry import DatabaseRegistry
from .replicas.rotation import ReplicaSet
from .replicas.routing import Replication
from .settings import RouterSettings, TenantSettings
from .tenancy.directory import TenantCatalog
from .tenancy.resolvers import TenantResolver
from .tenancy.routing import Tenancy
from .tenancy.strategy import StrategyContext

if TYPE_CHECKING:
    from fastapi import APIRouter

__all__ = ["DatabaseRouter"]


# Seconds a tenant whose first migration failed may take to be dropped again.
_UNDO_TIMEOUT = 10.0


class DatabaseRouter:
    """Holds an engine and a sessionmaker per configured database and hands out sessions.

    Building a router does no I/O; engines connect on first use. A router is *not opened*,
    then *open* (``async with router``, ``FastAPI(lifespan=router.lifespan)``, or the
    first read that needs the replica probes), then *closing* and *closed* (`dispose`),
    after which every method raises `RouterClosedError` and no engine opens a connection.

    *engine_factory* is the class that builds every engine (`EngineFactory` by default):
    a subclass can bind engines elsewhere, as a test harness does.
    """

    def __init__(
        self,
        settings: RouterSettings,
        *,
        tenant_resolver: TenantResolver | None = None,
        tenant_catalog: TenantCatalog | None = None,
        engine_factory: type[EngineFactory] = EngineFactory,
    ) -> None:
        self._settings = settings
        self._events = EventBus()
        log_events(self._events)
        self._lifecycle = Lifecycle()
        self._budget = (
            None
            if settings.max_connections is None
            else ConnectionBudget(settings.max_connections, events=self._events)
        )
        self._factory = engine_factory(
            events=self._events, budget=self._budget, lifecycle=self._lifecycle
        )
        self._registry = DatabaseRegistry(
            settings.databases, factory=self._factory, lifecycle=self._lifecycle
        )
        self._tenancy = (
            None
            if settings.tenancy is None
            else Tenancy(
                StrategyContext(
                    settings.tenancy,
                    self._registry,
                    settings.default_database,
                    self._factory,
                ),
                resolver=tenant_resolver,
                catalog=tenant_catalog,
            )
        )
        self._replication = (
            Replication(self._registry, self._factory, self._lifecycle)
            if any(database.is_replica for database in self._registry.values())
            else None
        )
        if self._budget is not None and self._tenancy is not None:
            self._budget.reclaim = self._tenancy.reclaim_idle
        self._metrics: RouterMetrics | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> DatabaseRouter:
        """A router configured from ``DBROUTER_*`` variables and ``.env``; *overrides* win."""
        return cls(RouterSettings(**overrides))

    @property
    def tenancy(self) -> Tenancy:
        """Tenant routing; `ConfigurationError` when ``tenancy`` is not configured,
        `RouterClosedError` once disposed."""
        self._lifecycle.check()
        if self._tenancy is None:
            raise ConfigurationError(
                "tenancy is not configured; set tenancy.strategy and where tenants come from "
                "(DBROUTER_TENANCY__URL_TEMPLATE, DBROUTER_TENANCY__TENANTS__<ID>__URL, ...)"
            )
        return self._tenancy

    async def __aenter__(self) -> DatabaseRouter:
        self.open()
        return self

    def open(self) -> None:
        """Start the background work (replica probes); needs a running event loop.
        Calling it again does nothing; after `dispose`, `RouterClosedError`."""
        self._lifecycle.open()

    @property
    def state(self) -> State:
        """Where the router is in its life: not opened, open, closing or closed."""
        return self._lifecycle.state

    @property
    def events(self) -> EventBus:
        """What happens inside the router, for logging, metrics and tests to subscribe to."""
        return self._events

    async def __aexit__(self, *exc_info: object) -> None:
        await self.dispose()

    @property
    def settings(self) -> RouterSettings:
        """The validated configuration."""
        return self._settings

    @property
    def names(self) -> frozenset[str]:
        """The configured database names."""
        return frozenset(self._registry)

    @property
    def open_connections(self) -> int | None:
        """Server connections open now when ``max_connections`` is set, else None."""
        return None if self._budget is None else self._budget.open

    @property
    def closed(self) -> bool:
        """Whether `dispose` was called."""
        return not self._lifecycle.usable

    def database(self, name: str | None = None) -> Database:
        """The database *name* (default: ``settings.default_database``)."""
        return self._registry[self._settings.default_database if name is None else name]

    def engine(self, name: str | None = None) -> AsyncEngine:
        """The engine of database *name*."""
        return self.database(name).engine

    def sessionmaker(self, name: str | None = None) -> SessionFactory:
        """The sessionmaker of database *name*."""
        return self.database(name).sessionmaker

    def session(self, name: str | None = None, *, commit: bool = False) -> LentSession:
        """``async with router.session(name) as session:`` — a session on database *name*
        for code outside requests (workers, scripts).

        Rolls back if the block raises and always closes. With ``commit=True`` it commits
        when the block ends without an error. An unreachable database or an exhausted pool
        raises `DatabaseUnavailableError`. A replica's session is read-only and goes to a
        server the replica routing picks.
        """
        database = self.database(name)
        if self._replication is not None and database.is_replica:
            group = self._replication.groups[database.name]
            return LentSession(None, commit=commit, route=group.lend_route)
        return LentSession(database, database.sessionmaker, commit=commit)

    def tenant_session(self, tenant: str, *, commit: bool = False) -> TenantLentSession:
        """``async with router.tenant_session(tenant) as session:`` — a session on *tenant*'s
        data, for code outside requests; `session` otherwise.

        The id is validated before anything else (`TenantResolutionError`), an unknown
        tenant raises `UnknownTenantError`, and `current_tenant()` is *tenant* inside.
        """
        return TenantLentSession(tenant, self.tenancy.route, commit=commit)

    def add_tenant(
        self,
        tenant: str,
        *,
        url: str | None = None,
        pool_size: int | None = None,
        max_overflow: int | None = None,
    ) -> None:
        """Declare *tenant* at runtime, or re-point it: its old engine is drained, then
        disposed."""
        settings = TenantSettings(url=url, pool_size=pool_size, max_overflow=max_overflow)
        self.tenancy.add(tenant, settings)

    def remove_tenant(self, tenant: str) -> None:
        """Forget a tenant declared in configuration or by `add_tenant`."""
        self.tenancy.remove(tenant)

    async def create_tenant(self, tenant: str) -> None:
        """Create *tenant*'s database (from ``tenancy.url_template``) or schema (from
        ``tenancy.schema_template``); the next request for it is served at once.

        The id is validated first (`TenantResolutionError`). A tenant with a ``url`` of its
        own or from a catalog is refused (`UnmanagedTenantError`), as is one whose storage
        exists already (`TenantExistsError`). The template's role needs the right to
        create databases (``CREATEDB``) or schemas.

        With ``tenancy.migrations`` set, the new tenant is migrated to head before this
        returns; when that fails, its database or schema is dropped again and
        `TenantError` says why.
        """
        tenancy = self.tenancy
        if tenancy.settings.migrations is None:
            await tenancy.create(tenant)
            return
        # Alembic is imported only by applications whose tenants have migrations.
        try:
            from .migrations.fleet import upgrade
        except ImportError:
            raise ConfigurationError(f"tenancy.migrations is set: {MISSING_EXTRA}") from None
        await tenancy.create(tenant)
        (result,) = (await upgrade(self, tenants=[tenant])).targets
        if result.status == "failed":
            await tenancy.drop(tenant, _UNDO_TIMEOUT)
            raise TenantError(
                f"tenant {tenant!r} was not created: migrating it to head failed "
                f"({result.error}); its database or schema was dropped again"
            )

    async def drop_tenant(self, tenant: str, *, timeout: float = 10.0) -> None:
        """Drop *tenant*'s database or schema, and everything in it.

        From the call on, a request for the tenant is a 404. Its sessions get up to
        *timeout* seconds to finish, then its engine is disposed and its storage dropped
        (a database ``WITH (FORCE)`` on PostgreSQL 13+, so other processes' connections to
        it are closed too). Errors as `create_tenant`; `UnknownTenantError` when there is
        nothing to drop.
        """
        await self.tenancy.drop(tenant, timeout)

    async def check(self) -> HealthReport:
        """Ping every database and report status, latency and pool figures; for replicas
        also whether each server is in rotation, why not, and its lag."""
        if self._replication is not None:
            # Without a running probe (a script, the CLI) rotation is measured now.
            await self._replication.measure()
        report = await check_databases(self._registry[name] for name in self._registry)
        if self._replication is not None:
            for name, group in self._replication.groups.items():
                report.databases[name] = dataclasses.replace(
                    report.databases[name], replicas=group.status()
                )
        return report

    @property
    def has_replicas(self) -> bool:
        """Whether any database is a replica (reads are routed, tokens are issued)."""
        return self._replication is not None

    def replica_set(self, name: str) -> ReplicaSet:
        """The servers of the replica *name*, with their rotation state (PostgreSQL
        replicas; `UnknownDatabaseError` for a name that is no such replica)."""
        database = self.database(name)
        group = None if self._replication is None else self._replication.groups.get(name)
        if group is None or group.replica_set is None:
            replicas = [] if self._replication is None else self._replication.groups
            raise UnknownDatabaseError(database.name, replicas)
        return group.replica_set

    async def list_tenants(self) -> list[str]:
        """Every tenant that can be enumerated (declared, the catalog's, or found on the
        server by the URL or schema template), sorted."""
        return await self.tenancy.list_tenants()

    def tenant_engines(self) -> dict[str, AsyncEngine]:
        """The engines kept now for tenants with a database of their own, by tenant id."""
        return {tenant: db.engine for tenant, db in self.tenancy.strategy.cached().items()}

    @property
    def draining_engines(self) -> int:
        """Evicted tenant engines still waiting for their sessions to finish."""
        return 0 if self._tenancy is None else self._tenancy.strategy.draining

    def metrics(self) -> MetricsSnapshot:
        """Every pool, replica, tenant and budget figure now, as plain data (see
        ``docs/observability.md``). The first call starts collecting them."""
        return self.metrics_collector().snapshot()

    def metrics_collector(self) -> RouterMetrics:
        """The collector of this router's figures, for exporters; the first call attaches
        meters to every pool and subscribes to the events (nothing is measured before)."""
        if self._metrics is None:
            replication, tenancy = self._replication, self._tenancy
            self._metrics = RouterMetrics(
                self._events,
                self._factory,
                replica_sets=lambda: (
                    []
                    if replication is None or self.closed
                    else [
                        group.replica_set
                        for group in replication.groups.values()
                        if group.replica_set is not None
                    ]
                ),
                tenant_engines=(
                    None if tenancy is None else lambda: len(tenancy.strategy.cached())
                ),
                budget=self._budget,
            )
        return self._metrics

    async def dispose(self, *, timeout: float = 10.0) -> None:
        """Close every connection of every engine; the router cannot be used afterwards.

        Nothing new is lent from the moment this is called; sessions already open may
        finish first, for up to *timeout* seconds. Calling it again does nothing.
        """
        if not self._lifecycle.begin_closing():
            return
        try:
            if self._replication is not None:
                await self._replication.close(timeout)
            if self._tenancy is not None:
                await self._tenancy.close(timeout)
            await self._registry.dispose_engines(timeout)
        finally:
            self._lifecycle.closed()

    def lifespan(self, app: Any) -> AbstractAsyncContextManager[dict[str, Any]]:
        """For ``FastAPI(lifespan=router.lifespan)``.

        On startup it checks that every database the app's routes name is configured
        (an unknown name stops the startup), makes the router reachable from requests and
        opens it. On shutdown it disposes every engine.
        """
        from .fastapi.lifespan import lifespan

        return lifespan(self, app)

    def health_router(self, *, path: str = "/health/databases") -> APIRouter:
        """An `APIRouter` serving the health report at *path* (200 healthy, 503 not)."""
        from .fastapi.health import build_health_router

        return build_health_router(self, path=path)

    def metrics_router(self, *, path: str = "/metrics") -> APIRouter:
        """An `APIRouter` serving every figure at *path* in the Prometheus text format
        (extra ``prometheus``); collecting starts now."""
        from .fastapi.metrics import build_metrics_router

        return build_metrics_router(self, path=path)
