"""The tenancy strategy protocol: how a validated, known tenant reaches its data.

A strategy is chosen from ``tenancy.strategy`` through `STRATEGIES`; nothing outside a
strategy module asks which strategy is in use. A third strategy (row-level security, say)
is one more module implementing `TenancyStrategy` and one more entry in `STRATEGIES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from ..databases import Database
from ..engines import EngineFactory
from ..registry import DatabaseRegistry
from ..settings import TenancySettings, TenantSettings

__all__ = [
    "SessionMaker",
    "StrategyContext",
    "TenancyStrategy",
    "TenantRoute",
    "TenantStorage",
    "strategies",
]

SessionMaker = Callable[[], AsyncSession]
TenantRoute = tuple[Database, SessionMaker]
"""Where a tenant's session goes: the database that lends it, and how to open it."""


@dataclass(frozen=True, slots=True)
class TenantStorage:
    """Where a tenant's data lives, for work done outside its sessions (migrations)."""

    database: Database
    """The database holding the tenant's data, reached with the URL and connection options
    the tenant's sessions use."""
    schema: str | None = None
    """The tenant's schema in that database, where tenants share one; None where the
    tenant has a database of its own."""
    search_path: str | None = None
    """With ``schema``: the ``search_path`` every transaction of the tenant's sessions is
    pinned to."""


@dataclass(frozen=True, slots=True)
class StrategyContext:
    """What a strategy is built from."""

    settings: TenancySettings
    registry: DatabaseRegistry
    """The named databases (the schema strategy's shared database is one of them)."""
    default_database: str
    factory: EngineFactory
    """Builds and disposes every engine a strategy needs."""


class TenancyStrategy(Protocol):
    """Stores each tenant's data somewhere and routes sessions there."""

    async def route(self, tenant: str, settings: TenantSettings) -> TenantRoute:
        """Where a session on the known *tenant* (with its *settings*) goes.
        `UnknownTenantError` when its storage turns out not to exist."""
        ...

    async def find(self, tenant: str) -> TenantSettings | None:
        """The settings of *tenant*, not declared anywhere, when its storage exists
        (found by the strategy's own rule: a database or a schema named after it)."""
        ...

    async def list_tenants(self) -> list[str]:
        """The ids of the tenants whose storage exists on the server, sorted."""
        ...

    def storage(
        self, tenant: str, settings: TenantSettings
    ) -> AbstractAsyncContextManager[TenantStorage]:
        """``async with strategy.storage(tenant, settings) as storage:`` — where the known
        *tenant* (with its *settings*) keeps its data, and an engine to reach it for the
        block: the shared one, or one built for the block and disposed after it. Opens no
        connection."""
        ...

    def forget(self, tenant: str) -> bool:
        """Drop what is cached for *tenant* (its engine is drained, then disposed);
        whether anything was."""
        ...

    def where(self, tenant: str, settings: TenantSettings) -> str:
        """Where *tenant*'s data lives, for people to read: never a password."""
        ...

    async def create(self, tenant: str) -> None:
        """Create the storage of the validated *tenant* by the strategy's own rule (the
        URL template's database, the schema template's schema); `TenantExistsError`
        when it exists already, `UnmanagedTenantError` when the strategy has no rule."""
        ...

    async def drop(self, tenant: str, timeout: float) -> None:
        """Drain and dispose what serves *tenant* (open sessions get up to *timeout*
        seconds), then drop its storage; `UnknownTenantError` when there is none."""
        ...

    def cached(self) -> dict[str, Database]:
        """The engines of a tenant's own kept now, by tenant id (empty where tenants share
        an engine)."""
        ...

    @property
    def draining(self) -> int:
        """Evicted engines still waiting for their sessions to finish."""
        ...

    def reclaim_idle(self) -> bool:
        """Close idle connections somewhere to free a slot of ``max_connections``;
        whether any were."""
        ...

    async def close(self, timeout: float) -> None:
        """Dispose what the strategy built, letting open sessions finish first."""
        ...


StrategyBuilder = Callable[[StrategyContext], TenancyStrategy]


def strategies() -> Mapping[str, StrategyBuilder]:
    """Each ``tenancy.strategy`` value and how its strategy is built."""
    from .database import DatabaseTenancy
    from .schema import SchemaTenancy

    return {"database": DatabaseTenancy.build, "schema": SchemaTenancy.build}
