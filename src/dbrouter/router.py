"""`DatabaseRouter`: the one object an application holds; every database goes through it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from .budget import ConnectionBudget
from .context import tenant_context
from .engines import SessionFactory
from .errors import ConfigurationError, RouterClosedError
from .health import HealthReport, check_databases
from .lending import LentSession
from .registry import Database, DatabaseRegistry
from .replicas.routing import Replication
from .settings import RouterSettings, TenantSettings
from .tenancy.directory import TenantCatalog
from .tenancy.resolvers import TenantResolver
from .tenancy.routing import Tenancy
from .urls import render

if TYPE_CHECKING:
    from fastapi import APIRouter

logger = logging.getLogger("dbrouter")

# Routing is retried when the engine found was evicted before a session could lease it.
_ROUTE_ATTEMPTS = 3


class DatabaseRouter:
    """Holds an engine and a sessionmaker per configured database and hands out sessions.

    Building a router does no I/O; engines connect on first use. `dispose` closes every
    connection, after which every method raises `RouterClosedError`; ``async with router:``
    disposes it at the end of the block.
    """

    def __init__(
        self,
        settings: RouterSettings,
        *,
        tenant_resolver: TenantResolver | None = None,
        tenant_catalog: TenantCatalog | None = None,
    ) -> None:
        self._settings = settings
        self._registry = DatabaseRegistry(settings.databases)
        self._budget = (
            None
            if settings.max_connections is None
            else ConnectionBudget(settings.max_connections)
        )
        self._tenancy = (
            None
            if settings.tenancy is None
            else Tenancy(
                settings.tenancy,
                self._registry,
                settings.default_database,
                resolver=tenant_resolver,
                catalog=tenant_catalog,
                budget=self._budget,
            )
        )
        self._replication = (
            Replication(self._registry, self._budget)
            if any(database.is_replica for database in self._registry.values())
            else None
        )
        if self._budget is not None:
            for database in self._registry.values():
                self._budget.instrument(
                    database.engine, name=database.name, timeout=database.settings.pool_timeout
                )
            if self._tenancy is not None and self._tenancy.engines is not None:
                self._budget.reclaim = self._tenancy.engines.reclaim_idle

    @classmethod
    def from_env(cls, **overrides: Any) -> DatabaseRouter:
        """A router configured from ``DBROUTER_*`` variables and ``.env``; *overrides* win."""
        return cls(RouterSettings(**overrides))

    @property
    def tenancy(self) -> Tenancy:
        """Tenant routing; `ConfigurationError` when ``tenancy`` is not configured."""
        if self._tenancy is None:
            raise ConfigurationError(
                "tenancy is not configured; set tenancy.strategy and where tenants come from "
                "(DBROUTER_TENANCY__URL_TEMPLATE, DBROUTER_TENANCY__TENANTS__<ID>__URL, ...)"
            )
        if self._registry.closed:
            raise RouterClosedError()
        return self._tenancy

    async def __aenter__(self) -> DatabaseRouter:
        return self

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
        return self._registry.closed

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
        if database.is_replica and self._replication is not None:
            group = self._replication.groups[database.name]
            return LentSession(None, commit=commit, route=group.lend_route)
        return LentSession(database, database.sessionmaker, commit=commit)

    @asynccontextmanager
    async def tenant_session(
        self, tenant: str, *, commit: bool = False
    ) -> AsyncIterator[AsyncSession]:
        """A session on *tenant*'s data, for code outside requests; `session` otherwise.

        The id is validated before anything else (`TenantResolutionError`), an unknown
        tenant raises `UnknownTenantError`, and `current_tenant()` is *tenant* inside.
        """
        tenancy = self.tenancy
        for attempt in range(_ROUTE_ATTEMPTS):
            database, make_session = await tenancy.route(tenant)
            lent = LentSession(database, make_session, commit=commit)
            try:
                # No await between routing and the lease: an eviction cannot slip in.
                session = await lent.__aenter__()
            except RouterClosedError:
                if attempt + 1 == _ROUTE_ATTEMPTS:
                    raise
                continue  # evicted between routing and the lease: route again
            break
        with tenant_context(tenant):
            async with _entered(lent, session):
                yield session

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

    async def check(self) -> HealthReport:
        """Ping every database and report status, latency and pool figures; for replicas
        also whether each server is in rotation, why not, and its lag."""
        if self._replication is not None:
            # Without a running probe (a script, the CLI) rotation is measured now.
            await self._replication.probe_idle()
        report = await check_databases(self._registry[name] for name in self._registry)
        if self._replication is not None:
            for name, group in self._replication.groups.items():
                report.databases[name] = dataclasses.replace(
                    report.databases[name], replicas=group.status()
                )
        return report

    @property
    def replication(self) -> Replication | None:
        """The replica groups, when any database is a replica."""
        return self._replication

    async def dispose(self, *, timeout: float = 10.0) -> None:
        """Close every connection of every engine; the router cannot be used afterwards.

        Sessions already open may finish first, for up to *timeout* seconds.
        """
        if self._registry.closed:
            return
        if self._replication is not None:
            await self._replication.close(timeout)
        if self._tenancy is not None:
            await self._tenancy.close(timeout)
        await self._registry.dispose(timeout=timeout)

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[dict[str, Any]]:
        """For ``FastAPI(lifespan=router.lifespan)``.

        On startup it checks that every database the app's routes name is configured
        (an unknown name stops the startup) and makes the router reachable from requests.
        On shutdown it disposes every engine.
        """
        from .fastapi.dependencies import attach_router

        state = attach_router(self, app)
        if self._replication is not None:
            self._replication.start()
        for name in sorted(self._registry):
            logger.info(
                "dbrouter: database %r at %s", name, render(self.database(name).settings.url)
            )
        try:
            yield state
        finally:
            await self.dispose()

    def health_router(self, *, path: str = "/health/databases") -> APIRouter:
        """An `APIRouter` serving the health report at *path* (200 healthy, 503 not)."""
        from .fastapi.dependencies import build_health_router

        return build_health_router(self, path=path)


@asynccontextmanager
async def _entered(lent: LentSession, session: AsyncSession) -> AsyncIterator[AsyncSession]:
    """Leave *lent*, already entered, when the block ends."""
    try:
        yield session
    except BaseException as exc:
        await lent.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    await lent.__aexit__(None, None, None)
