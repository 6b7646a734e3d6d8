"""The ``database`` tenancy strategy: one engine per tenant, built on first use, kept in a
bounded cache with idle expiry, and disposed only once its sessions are done."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable

from cachetools import TTLCache
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import NullPool, QueuePool

from ..databases import Database
from ..engines import EngineFactory
from ..errors import RouterClosedError, UnknownTenantError, UnmanagedTenantError
from ..events import TenantEngineEvicted
from ..outages import as_unavailable
from ..settings import NO_OVERRIDES, DatabaseSettings, TenancySettings, TenantSettings, tenant_url
from ..singleflight import SingleFlight
from ..urls import render
from .storage import NO_SUCH_DATABASE, quoted, refused, sqlstate
from .strategy import StrategyContext, TenantRoute, TenantStorage

__all__ = ["DatabaseTenancy", "TenantEngineCache"]

logger = logging.getLogger("dbrouter")

_PLACEHOLDER = "dbroutertenantlisting"
_DATABASES = text("SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn")


class TenantEngineCache(TTLCache[str, Database]):
    """At most *maxsize* tenant databases, each dropped *ttl* seconds after its last use.

    Eviction by size (`popitem`) and by age (`expire`) both hand the database to
    *evicted*, the one path that drains and disposes it.
    """

    def __init__(self, maxsize: int, ttl: float, evicted: Callable[[Database], None]) -> None:
        super().__init__(maxsize, ttl)
        self._evicted = evicted

    def popitem(self) -> tuple[str, Database]:
        """Evict the least recently used tenant database."""
        key, database = super().popitem()
        self._evicted(database)
        return key, database

    def expire(self, time: float | None = None) -> list[tuple[str, Database]]:
        """Evict every tenant database idle for longer than the ttl."""
        expired: list[tuple[str, Database]] = list(super().expire(time))
        for _, database in expired:
            self._evicted(database)
        return expired


class DatabaseTenancy:
    """The ``database`` strategy: each tenant has a database, and an engine of its own."""

    def __init__(self, tenancy: TenancySettings, factory: EngineFactory) -> None:
        self._tenancy = tenancy
        self._factory = factory
        self._budget = factory.budget
        self._last_used: dict[str, float] = {}
        self._refresh_after = min(1.0, tenancy.engine_idle_ttl / 100)
        # The settings each cached engine was built from: other settings need a new one.
        self._built_from: dict[str, TenantSettings] = {}
        self._cache = TenantEngineCache(tenancy.max_engines, tenancy.engine_idle_ttl, self._retire)
        self._building: SingleFlight[str, Database] = SingleFlight()
        self._retiring: dict[asyncio.Task[None], Database] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def build(cls, context: StrategyContext) -> DatabaseTenancy:
        """The strategy for *context*'s settings."""
        return cls(context.settings, context.factory)

    async def route(self, tenant: str, settings: TenantSettings) -> TenantRoute:
        """The tenant's own database and its sessionmaker."""
        database = await self.database(tenant, settings)
        return database, database.sessionmaker

    async def find(self, tenant: str) -> TenantSettings | None:
        """Template settings when the database the URL template names exists (its engine
        is built and cached on the way)."""
        if self._tenancy.url_template is None:
            return None
        found = NO_OVERRIDES
        try:
            await self.database(tenant, found)
        except UnknownTenantError:
            return None
        return found

    @contextlib.asynccontextmanager
    async def storage(self, tenant: str, settings: TenantSettings) -> AsyncIterator[TenantStorage]:
        """The tenant's database, with an engine of its own for the block (one connection,
        not pooled, counted against ``max_connections``), disposed after it."""
        database = self._factory.build(
            f"maintenance:tenant:{tenant}",
            self._database_settings(tenant, settings),
            kind="maintenance",
            poolclass=NullPool,
        )
        try:
            yield TenantStorage(database)
        finally:
            await self._factory.dispose(database)

    def forget(self, tenant: str) -> bool:
        """Evict *tenant*'s engine (see `evict`)."""
        return self.evict(tenant)

    async def list_tenants(self) -> list[str]:
        """The ids whose database, named by the URL template, exists on its server."""
        template = self._tenancy.url_template
        if template is None:
            return []
        prefix, _, suffix = (tenant_url(template, _PLACEHOLDER).database or "").partition(
            _PLACEHOLDER
        )
        async with self._maintenance(_PLACEHOLDER) as connection:
            names = (await connection.scalars(_DATABASES)).all()
        found = (_between(name, prefix, suffix) for name in names)
        return sorted(tenant for tenant in found if tenant)

    def where(self, tenant: str, settings: TenantSettings) -> str:
        """The URL of *tenant*'s database, its password hidden."""
        url = self._url(tenant, settings)
        return "(no database: no url and no url_template)" if url is None else render(url)

    async def create(self, tenant: str) -> None:
        """``CREATE DATABASE`` of the URL template's database for *tenant*, through a
        connection to the ``postgres`` database of the same server and role."""
        url = self._derived(tenant, "create")
        async with self._maintenance(tenant) as connection:
            name = quoted(connection, url.database or "")
            try:
                await connection.execute(text(f"CREATE DATABASE {name}"))
            except sa_exc.DBAPIError as exc:
                raise refused(exc, tenant, f"database {url.database!r}", "create") from exc

    async def drop(self, tenant: str, timeout: float) -> None:
        """Dispose *tenant*'s engine once its sessions are done (at most *timeout*
        seconds), then ``DROP DATABASE`` — with ``FORCE`` on PostgreSQL 13 and later, so
        connections other processes keep to it are closed too."""
        url = self._derived(tenant, "drop")
        await self._dispose_now(tenant, timeout)
        async with self._maintenance(tenant) as connection:
            name = quoted(connection, url.database or "")
            version = connection.dialect.server_version_info or (0,)
            force = " WITH (FORCE)" if version >= (13,) else ""
            try:
                await connection.execute(text(f"DROP DATABASE {name}{force}"))
            except sa_exc.DBAPIError as exc:
                raise refused(exc, tenant, f"database {url.database!r}", "drop") from exc

    def _derived(self, tenant: str, action: str) -> URL:
        # Settings let a URL template name PostgreSQL only.
        template = self._tenancy.url_template
        if template is None:
            raise UnmanagedTenantError(
                f"cannot {action} tenant {tenant!r}: dbrouter creates and drops only the "
                "databases it derives from tenancy.url_template, and none is set"
            )
        url = self._url(tenant, NO_OVERRIDES)
        assert url is not None
        return url

    @contextlib.asynccontextmanager
    async def _maintenance(self, tenant: str) -> AsyncIterator[AsyncConnection]:
        # The server's own "postgres" database, with the role, TLS and timeouts a template
        # tenant's engine gets, in autocommit: CREATE and DROP DATABASE cannot run inside a
        # transaction.
        settings = self._database_settings(tenant, NO_OVERRIDES)
        url = settings.url.set(database="postgres")
        maintenance = self._factory.build(
            f"maintenance:{url.host or 'local'}",
            settings.model_copy(update={"url": url}),
            kind="maintenance",
            poolclass=NullPool,
        )
        try:
            try:
                async with maintenance.engine.connect() as connection:
                    yield await connection.execution_options(isolation_level="AUTOCOMMIT")
            except Exception as exc:  # the driver's own errors too: a refused connection
                unavailable = as_unavailable(exc, maintenance.name)
                if unavailable is None:
                    raise
                raise unavailable from exc
        finally:
            await self._factory.dispose(maintenance)

    async def _dispose_now(self, tenant: str, timeout: float) -> None:
        database = self._cache.pop(tenant, None)
        if database is None:
            return
        self._retire(database)
        task = next(task for task, retiring in self._retiring.items() if retiring is database)
        await self._wait_retired({task}, timeout)

    def cached(self) -> dict[str, Database]:
        """The tenant databases cached now, by tenant id."""
        return {tenant: self._cache[tenant] for tenant in list(self._cache)}

    @property
    def draining(self) -> int:
        """Evicted tenant databases still waiting for their sessions to finish."""
        return len(self._retiring)

    async def database(self, tenant: str, settings: TenantSettings) -> Database:
        """The database of *tenant*, built (exactly once, however many ask) on first use."""
        database = self._cache.get(tenant)
        if database is not None and not database.leases.retired:
            built_from = self._built_from.get(tenant)
            if built_from is settings or built_from == settings:
                now = time.monotonic()
                if now - self._last_used.get(tenant, 0.0) >= self._refresh_after:
                    # Idle time counts from the last use, to within a fraction of the ttl:
                    # putting the entry back costs more than the rest of this lookup.
                    self._cache[tenant] = database
                    self._last_used[tenant] = now
                return database
            self.evict(tenant)  # re-pointed since it was built
        return await self._building.run(tenant, functools.partial(self._build, tenant, settings))

    def evict(self, tenant: str) -> bool:
        """Drop *tenant*'s engine now (its open sessions finish first); whether an engine
        was cached."""
        database = self._cache.pop(tenant, None)
        if database is not None:
            self._retire(database)
        return database is not None

    def reclaim_idle(self) -> bool:
        """Evict the least recently used engine that holds idle connections and serves no
        session, so that its connections close; False when there is none."""
        idle = [
            (self._last_used.get(tenant, 0.0), tenant)
            for tenant, database in self.cached().items()
            if database.leases.count == 0 and self._open_connections(database) > 0
        ]
        if not idle:
            return False
        self.evict(min(idle)[1])
        return True

    def _open_connections(self, database: Database) -> int:
        if self._budget is not None:
            return self._budget.held(database.engine)
        pool = database.engine.pool
        return pool.checkedin() if isinstance(pool, QueuePool) else 0

    async def close(self, timeout: float) -> None:
        """Evict every engine and wait (up to *timeout* seconds) until all are disposed."""
        self._closed = True
        building = self._building.running()
        if building:
            # A build under way sees the flag when it ends and disposes what it built.
            await asyncio.wait(building, timeout=timeout)
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        self._cache.expire()
        for tenant in list(self._cache):
            self.evict(tenant)
        if not self._retiring:
            return
        await self._wait_retired(set(self._retiring), timeout)

    async def _wait_retired(self, tasks: set[asyncio.Task[None]], timeout: float) -> None:
        """Wait (at most *timeout* seconds) for the disposal *tasks*; a database whose
        sessions outlast that is disposed under them."""
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            database = self._retiring[task]
            logger.warning(
                "dbrouter: disposing %s while %d session(s) still use it",
                database.name,
                database.leases.count,
            )
            task.cancel()
            await database.engine.dispose()

    async def _build(self, tenant: str, settings: TenantSettings) -> Database:
        database = self._new_database(tenant, settings)
        if settings.url is None:
            await self._verify(tenant, database)
        if self._closed:
            # The router closed while this engine was built.
            await self._factory.dispose(database)
            raise RouterClosedError()
        self._cache[tenant] = database
        self._built_from[tenant] = settings
        self._last_used[tenant] = time.monotonic()
        self._start_reaper()
        return database

    def _new_database(self, tenant: str, settings: TenantSettings) -> Database:
        database_settings = self._database_settings(tenant, settings)
        return self._factory.build(f"tenant:{tenant}", database_settings, kind="tenant")

    def _url(self, tenant: str, settings: TenantSettings) -> URL | None:
        """The URL of *tenant*'s database: its own, else the template's; None without
        either."""
        if settings.url is not None:
            return settings.url
        template = self._tenancy.url_template
        # The id matched the tenant pattern, and the template was checked to place it in
        # the database name only: it cannot reach the host, user or query.
        return None if template is None else tenant_url(template, tenant)

    def _database_settings(self, tenant: str, settings: TenantSettings) -> DatabaseSettings:
        tenancy = self._tenancy
        url = self._url(tenant, settings)
        if url is None:
            raise UnknownTenantError(tenant)
        return DatabaseSettings(
            url=url,
            pool_size=settings.pool_size or tenancy.pool_size,
            max_overflow=(
                tenancy.max_overflow if settings.max_overflow is None else settings.max_overflow
            ),
            pool_timeout=tenancy.pool_timeout,
            connect_timeout=tenancy.connect_timeout,
            **tenancy.tenant_connection(settings),
        )

    async def _verify(self, tenant: str, database: Database) -> None:
        # A template tenant exists only if its database does; find out before a request
        # is routed there, so that a missing one is a 404 and not a 503.
        try:
            async with database.engine.connect():
                pass
        except BaseException as exc:
            await self._factory.dispose(database)
            if not isinstance(exc, Exception):
                raise  # cancelled: nothing of the engine is left behind
            if sqlstate(exc) == NO_SUCH_DATABASE:
                raise UnknownTenantError(tenant) from None
            unavailable = as_unavailable(exc, database.name)
            if unavailable is not None:
                raise unavailable from exc
            raise

    def _retire(self, database: Database) -> None:
        tenant = database.name.removeprefix("tenant:")
        self._last_used.pop(tenant, None)
        self._built_from.pop(tenant, None)
        database.leases.retire()
        task = asyncio.get_running_loop().create_task(self._factory.dispose(database))
        self._retiring[task] = database
        task.add_done_callback(self._forget)
        self._factory.events.emit(TenantEngineEvicted(tenant, database.name))

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._retiring.pop(task, None)

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        interval = min(1.0, self._tenancy.engine_idle_ttl / 4)
        while True:
            await asyncio.sleep(interval)
            self._cache.expire()


def _between(name: str, prefix: str, suffix: str) -> str | None:
    if len(name) <= len(prefix) + len(suffix):
        return None
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return None
    return name[len(prefix) : len(name) - len(suffix)]
