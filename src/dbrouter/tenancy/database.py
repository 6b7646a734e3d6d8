"""The ``database`` tenancy strategy: one engine per tenant, built on first use, kept in a
bounded cache with idle expiry, and disposed only once its sessions are done."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import Callable

from cachetools import TTLCache
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import QueuePool

from ..budget import ConnectionBudget
from ..engines import build_engine, build_sessionmaker
from ..errors import RouterClosedError, UnknownTenantError
from ..outages import as_unavailable
from ..registry import Database, drain_and_dispose
from ..settings import DatabaseSettings, TenancySettings, TenantSettings
from ..singleflight import SingleFlight
from ..urls import parse_url

logger = logging.getLogger("dbrouter")

# PostgreSQL's "database does not exist": a tenant the URL template points nowhere.
_NO_SUCH_DATABASE = "3D000"
_MISSING = re.compile(r'FATAL:\s+database ".*" does not exist')


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


class TenantEngines:
    """The engines of the ``database`` strategy."""

    def __init__(self, tenancy: TenancySettings, budget: ConnectionBudget | None = None) -> None:
        self._tenancy = tenancy
        self._budget = budget
        self._last_used: dict[str, float] = {}
        # The settings each cached engine was built from: other settings need a new one.
        self._built_from: dict[str, TenantSettings] = {}
        self._cache = TenantEngineCache(tenancy.max_engines, tenancy.engine_idle_ttl, self._retire)
        self._building: SingleFlight[str, Database] = SingleFlight()
        self._retiring: dict[asyncio.Task[None], Database] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    def cached(self) -> dict[str, Database]:
        """The tenant databases cached now, by tenant id."""
        return {tenant: self._cache[tenant] for tenant in list(self._cache)}

    @property
    def retiring(self) -> int:
        """Evicted tenant databases still waiting for their sessions to finish."""
        return len(self._retiring)

    async def database(self, tenant: str, settings: TenantSettings) -> Database:
        """The database of *tenant*, built (exactly once, however many ask) on first use."""
        database = self._cache.get(tenant)
        if database is not None and not database.leases.retired:
            if self._built_from.get(tenant) == settings:
                self._cache[tenant] = database  # idle time counts from the last use
                self._last_used[tenant] = time.monotonic()
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
        _, late = await asyncio.wait(set(self._retiring), timeout=timeout)
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
            await database.engine.dispose()
            raise RouterClosedError()
        self._cache[tenant] = database
        self._built_from[tenant] = settings
        self._last_used[tenant] = time.monotonic()
        self._start_reaper()
        return database

    def _new_database(self, tenant: str, settings: TenantSettings) -> Database:
        tenancy = self._tenancy
        url = settings.url
        if url is None:
            template = tenancy.url_template
            if template is None:
                raise UnknownTenantError(tenant)
            # The id matched the tenant pattern, and the template was checked to place it
            # in the database name only: it cannot reach the host, user or query.
            url = parse_url(template.replace("{tenant}", tenant))
        database_settings = DatabaseSettings(
            url=url,
            pool_size=settings.pool_size or tenancy.pool_size,
            max_overflow=(
                tenancy.max_overflow if settings.max_overflow is None else settings.max_overflow
            ),
            pool_timeout=tenancy.pool_timeout,
            connect_timeout=tenancy.connect_timeout,
            **tenancy.tenant_connection(settings),
        )
        name = f"tenant:{tenant}"
        engine = build_engine(database_settings, name=name)
        if self._budget is not None:
            self._budget.instrument(engine, name=name, timeout=tenancy.pool_timeout)
        return Database(name, database_settings, engine, build_sessionmaker(engine, name))

    async def _verify(self, tenant: str, database: Database) -> None:
        # A template tenant exists only if its database does; find out before a request
        # is routed there, so that a missing one is a 404 and not a 503.
        try:
            async with database.engine.connect():
                pass
        except BaseException as exc:
            await database.engine.dispose()
            if not isinstance(exc, Exception):
                raise  # cancelled: nothing of the engine is left behind
            if _sqlstate(exc) == _NO_SUCH_DATABASE:
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
        task = asyncio.get_running_loop().create_task(drain_and_dispose(database))
        self._retiring[task] = database
        task.add_done_callback(self._forget)
        logger.debug("dbrouter: evicting %s", database.name)

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


def _sqlstate(exc: BaseException) -> str | None:
    current: BaseException | None = exc
    while current is not None:
        state = getattr(current, "sqlstate", None)
        if isinstance(state, str):
            return state
        if state is None and "FATAL:" in str(current) and _MISSING.search(str(current)):
            return _NO_SUCH_DATABASE  # libpq (psycopg) gives the server's refusal as text
        current = current.__cause__ or (
            current.orig if isinstance(current, sa_exc.DBAPIError) else None
        )
    return None
