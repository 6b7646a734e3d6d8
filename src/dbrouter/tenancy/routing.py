"""Routing a tenant id to the database (and schema) that holds the tenant's data."""

from __future__ import annotations

import functools
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession

from ..budget import ConnectionBudget
from ..errors import ConfigurationError, UnknownTenantError
from ..registry import Database, DatabaseRegistry
from ..settings import TenancySettings, TenantSettings
from ..urls import is_postgresql
from .database import TenantEngines
from .directory import TenantCatalog, TenantDirectory
from .resolvers import HeaderTenantResolver, TenantResolver
from .schema import SchemaTenancy

SessionMaker = Callable[[], AsyncSession]


class Tenancy:
    """Validates tenant ids, finds tenants, and hands out their database and sessions."""

    def __init__(
        self,
        settings: TenancySettings,
        registry: DatabaseRegistry,
        default_database: str,
        *,
        resolver: TenantResolver | None = None,
        catalog: TenantCatalog | None = None,
        budget: ConnectionBudget | None = None,
    ) -> None:
        self.settings = settings
        self.resolver: TenantResolver = resolver or HeaderTenantResolver(settings.header)
        self.directory = TenantDirectory(settings, catalog=catalog)
        self.engines: TenantEngines | None = None
        self.schemas: SchemaTenancy | None = None
        if settings.strategy == "schema":
            holder = registry[settings.schema_database or default_database]
            if not is_postgresql(holder.settings.url):
                raise ConfigurationError(
                    f"tenancy.strategy: 'schema' needs a PostgreSQL database, and "
                    f"{holder.name!r} is {holder.settings.url.get_backend_name()}; "
                    "use the 'database' strategy"
                )
            self.schemas = SchemaTenancy(holder, settings.schema_template)
        else:
            self.engines = TenantEngines(settings, budget)

    async def identify(self, raw: object) -> tuple[str, TenantSettings]:
        """*raw* as a known tenant id, with the tenant's settings.

        Raises `TenantResolutionError` for a missing or malformed id (before any I/O) and
        `UnknownTenantError` for an id that names no tenant.
        """
        tenant = self.directory.validate(raw)
        return tenant, await self.directory.lookup(tenant, self._find)

    async def route(self, tenant: str) -> tuple[Database, SessionMaker]:
        """The database of *tenant* and how to open a session on it (see `identify`)."""
        tenant, settings = await self.identify(tenant)
        if self.schemas is not None:
            return self.schemas.database, functools.partial(self.schemas.session, tenant)
        assert self.engines is not None
        try:
            database = await self.engines.database(tenant, settings)
        except UnknownTenantError:
            self.directory.forget(tenant, unknown=True)
            raise
        return database, database.sessionmaker

    def add(self, tenant: str, settings: TenantSettings) -> None:
        """Declare or re-point *tenant*; a replaced engine is drained, then disposed."""
        self.directory.add(tenant, settings)
        if self.engines is not None:
            self.engines.evict(tenant)

    def remove(self, tenant: str) -> None:
        """Forget *tenant*; its engine is drained, then disposed.

        A tenant found through the catalog or the URL template is only forgotten until
        the next request finds it again. `UnknownTenantError` when nothing was known.
        """
        known = self.directory.remove(tenant)
        if self.engines is not None:
            known = self.engines.evict(tenant) or known
        if not known:
            raise UnknownTenantError(tenant)

    async def close(self, timeout: float) -> None:
        """Dispose every tenant engine, letting open sessions finish first."""
        if self.engines is not None:
            await self.engines.close(timeout)

    async def _find(self, tenant: str) -> TenantSettings | None:
        # How a tenant outside the static list and without a catalog is found: its schema
        # exists, or the database its URL template names does (building its engine).
        if self.schemas is not None:
            return await self.schemas.find(tenant)
        if self.settings.url_template is None or self.engines is None:
            return None
        found = TenantSettings()
        try:
            await self.engines.database(tenant, found)
        except UnknownTenantError:
            return None
        return found
