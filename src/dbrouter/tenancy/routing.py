"""Routing a tenant id to the database (and schema) that holds the tenant's data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..errors import UnknownTenantError, UnmanagedTenantError
from ..settings import NO_OVERRIDES, TenantSettings
from .directory import TenantCatalog, TenantDirectory
from .resolvers import HeaderTenantResolver, TenantResolver
from .strategy import StrategyContext, TenancyStrategy, TenantRoute, TenantStorage, strategies

__all__ = ["Tenancy"]


class Tenancy:
    """Validates tenant ids, finds tenants, and hands out their database and sessions
    through the configured strategy."""

    def __init__(
        self,
        context: StrategyContext,
        *,
        resolver: TenantResolver | None = None,
        catalog: TenantCatalog | None = None,
    ) -> None:
        settings = context.settings
        self.settings = settings
        self.resolver: TenantResolver = resolver or HeaderTenantResolver(settings.header)
        self._events = context.factory.events
        self.strategy: TenancyStrategy = strategies()[settings.strategy](context)
        self.directory = TenantDirectory(settings, catalog=catalog, events=self._events)

    async def identify(self, raw: object) -> tuple[str, TenantSettings]:
        """*raw* as a known tenant id, with the tenant's settings.

        Raises `TenantResolutionError` for a missing or malformed id (before any I/O) and
        `UnknownTenantError` for an id that names no tenant.
        """
        directory = self.directory
        if type(raw) is str:  # a subclass could compare equal to an id it is not
            settings = directory.known(raw)
            if settings is not None:
                return raw, settings
        tenant = directory.validate(raw)
        return tenant, await directory.lookup(tenant, self._find)

    async def route(self, tenant: str, settings: TenantSettings | None = None) -> TenantRoute:
        """The database of *tenant* and how to open a session on it: *settings* are those
        `identify` gave for it, else it is identified first."""
        if settings is None:
            tenant, settings = await self.identify(tenant)
        try:
            return await self.strategy.route(tenant, settings)
        except UnknownTenantError:
            self.directory.forget(tenant, unknown=True)
            raise

    @asynccontextmanager
    async def storage(self, tenant: str, *, listed: bool = False) -> AsyncIterator[TenantStorage]:
        """``async with tenancy.storage(tenant) as storage:`` — where *tenant* keeps its
        data, for work outside its sessions (`TenancyStrategy.storage`).

        The id is validated and looked up as for a session. With *listed* (the id came
        from `list_tenants`, so its storage was just seen) a tenant that only the strategy's
        rule knows is taken as found, without asking the server again.
        """
        if listed:
            tenant = self.directory.validate(tenant)
            settings = await self.directory.lookup(tenant, _found)
        else:
            tenant, settings = await self.identify(tenant)
        async with self.strategy.storage(tenant, settings) as storage:
            yield storage

    async def list_tenants(self) -> list[str]:
        """Every tenant that can be enumerated: declared ones, and the catalog's (when it
        lists) or else those whose storage exists on the server. Sorted, each valid."""
        found = await self.directory.list_tenants(self.strategy.list_tenants)
        return sorted(tenant for tenant in found if self.directory.is_valid(tenant))

    def add(self, tenant: str, settings: TenantSettings) -> None:
        """Declare or re-point *tenant*; a replaced engine is drained, then disposed."""
        self.directory.add(tenant, settings)
        self.strategy.forget(tenant)

    def remove(self, tenant: str) -> None:
        """Forget *tenant*; its engine is drained, then disposed.

        A tenant found through the catalog or the URL template is only forgotten until
        the next request finds it again. `UnknownTenantError` when nothing was known.
        """
        known = self.directory.remove(tenant)
        known = self.strategy.forget(tenant) or known
        if not known:
            raise UnknownTenantError(tenant)

    def where(self, tenant: str) -> str:
        """Where *tenant* keeps its data, for people to read: never a password."""
        declared = self.directory.declared(tenant)
        if declared is None and self.directory.has_catalog:
            return "(the tenant catalog's)"
        return self.strategy.where(tenant, declared or NO_OVERRIDES)

    async def create(self, tenant: str) -> None:
        """Create *tenant*'s database or schema and make it known at once; the tenant id
        validated.

        `TenantResolutionError` for a malformed id (before any I/O),
        `UnmanagedTenantError` for a tenant whose storage is not derived from a template,
        `TenantExistsError` when its storage exists already.
        """
        tenant = self._managed(tenant, "create")
        await self.strategy.create(tenant)
        self.directory.found(tenant)

    async def drop(self, tenant: str, timeout: float) -> None:
        """Forget *tenant* at once (its next request is a 404), drain and dispose its
        engine, then drop its database or schema (see `create` for the errors;
        `UnknownTenantError` when there is nothing to drop)."""
        tenant = self._managed(tenant, "drop")
        declared = self.directory.declared(tenant)
        self.directory.remove(tenant)
        self.directory.forget(tenant, unknown=True)
        try:
            await self.strategy.drop(tenant, timeout)
        except BaseException as exc:
            if not isinstance(exc, UnknownTenantError):
                # Still there: the tenant stays as it was.
                self.directory.forget(tenant, unknown=False)
                if declared is not None:
                    self.directory.add(tenant, declared)
            raise

    def _managed(self, raw: object, action: str) -> str:
        tenant = self.directory.validate(raw)
        declared = self.directory.declared(tenant)
        if declared is not None and declared.url is not None:
            raise UnmanagedTenantError(
                f"cannot {action} tenant {tenant!r}: it has a database of its own "
                f"(tenancy.tenants.{tenant}.url); dbrouter creates and drops only what it "
                "derives from a template"
            )
        if self.directory.has_catalog:
            raise UnmanagedTenantError(
                f"cannot {action} tenant {tenant!r}: tenants come from the tenant catalog; "
                f"{action} it there"
            )
        return tenant

    def reclaim_idle(self) -> bool:
        """Close idle tenant connections to free a slot of ``max_connections``."""
        return self.strategy.reclaim_idle()

    async def close(self, timeout: float) -> None:
        """Dispose every tenant engine, letting open sessions finish first."""
        await self.strategy.close(timeout)

    async def _find(self, tenant: str) -> TenantSettings | None:
        # A tenant outside the static list and without a catalog: the strategy's rule.
        return await self.strategy.find(tenant)


async def _found(tenant: str) -> TenantSettings:
    # What the strategies' own find answers for a tenant whose storage exists.
    return NO_OVERRIDES
