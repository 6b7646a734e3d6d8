"""What a command runs on: the named databases with ``migrations`` set and the tenants
(with ``tenancy.migrations``), each reached the way the application reaches it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from ..databases import Database
from ..errors import ConfigurationError
from ..router import DatabaseRouter
from ..tenancy.routing import Tenancy

__all__ = ["Place", "Selection", "Target", "select_targets", "tenant_scripts"]


@dataclass(frozen=True, slots=True)
class Place:
    """Where a target's data is, for the time of its migration."""

    database: Database
    """The database, with the engine the migration connects through."""
    schema: str | None = None
    """A schema tenant's schema."""
    search_path: str | None = None
    """With ``schema``: the search path the tenant's sessions are pinned to."""


@dataclass(frozen=True, slots=True)
class Target:
    """One named database or one tenant."""

    name: str
    """``database:<name>`` or ``tenant:<id>``."""
    scripts: Path
    """Its Alembic script directory."""
    key: str
    """The settings key of that directory, for messages."""
    reach: Callable[[], AbstractAsyncContextManager[Place]]
    """``async with target.reach() as place:`` — its database (and schema) for a while."""

    @property
    def is_tenant(self) -> bool:
        """Whether the target is a tenant (migrated after the named databases)."""
        return self.name.startswith("tenant:")


@dataclass(frozen=True, slots=True)
class Selection:
    """Which targets a command runs on; nothing selected means every target."""

    databases: tuple[str, ...] = ()
    """Named databases, each with ``migrations`` set."""
    tenants: tuple[str, ...] = ()
    """Tenant ids."""
    all_tenants: bool = False
    """Every tenant that can be listed."""

    @classmethod
    def of(
        cls, databases: Iterable[str] = (), tenants: Iterable[str] = (), *, all_tenants: bool
    ) -> Selection:
        """A selection, each name once, in the order given; a bare string is refused
        (``databases="primary"`` would select seven one-letter databases)."""
        for key, names in (("databases", databases), ("tenants", tenants)):
            if isinstance(names, str):
                raise ConfigurationError(
                    f"{key}: expected a list of names, got the string {names!r}"
                )
        return cls(tuple(dict.fromkeys(databases)), tuple(dict.fromkeys(tenants)), all_tenants)

    @property
    def everything(self) -> bool:
        """Whether nothing was selected, so that every target is."""
        return not (self.databases or self.tenants or self.all_tenants)


async def select_targets(router: DatabaseRouter, selection: Selection) -> list[Target]:
    """The targets *selection* names: named databases first, in the order configured or
    given, then tenants, sorted. `ConfigurationError` for a database without
    ``migrations`` (a replica among them), tenants without ``tenancy.migrations``, or
    nothing to migrate at all; `UnknownDatabaseError` for a name that is not configured;
    `TenantResolutionError` for a malformed tenant id."""
    settings = router.settings
    if selection.everything:
        names = [name for name, database in settings.databases.items() if database.migrations]
    else:
        names = list(selection.databases)
    targets = [_database_target(router, name) for name in names]
    tenancy_migrations = None if settings.tenancy is None else settings.tenancy.migrations
    if selection.everything and tenancy_migrations is None:
        if not targets:
            raise ConfigurationError(
                "nothing to migrate: no database has migrations set "
                "(databases.<name>.migrations) and neither has tenancy (tenancy.migrations)"
            )
        return targets
    if not (selection.everything or selection.all_tenants or selection.tenants):
        return targets
    scripts = tenant_scripts(router)
    tenancy = router.tenancy
    every = selection.everything or selection.all_tenants
    listed = set(await router.list_tenants()) if every else set()
    chosen = listed | {tenancy.directory.validate(tenant) for tenant in selection.tenants}
    for tenant in sorted(chosen):
        targets.append(
            Target(
                f"tenant:{tenant}",
                scripts,
                "tenancy.migrations",
                _tenant_place(tenancy, tenant, listed=tenant in listed),
            )
        )
    return targets


def tenant_scripts(router: DatabaseRouter) -> Path:
    """The tenants' script directory (``tenancy.migrations``); `ConfigurationError` when
    tenancy or its migrations are not configured."""
    migrations = router.tenancy.settings.migrations
    if migrations is None:
        raise ConfigurationError(
            "tenancy.migrations is not set: tenants have no Alembic script directory; set "
            "DBROUTER_TENANCY__MIGRATIONS (dbrouter migrate init PATH makes one)",
            problems=[("tenancy.migrations", "not set")],
        )
    return migrations


def _database_target(router: DatabaseRouter, name: str) -> Target:
    database = router.database(name)
    settings = database.settings
    if settings.replica_of is not None:
        raise ConfigurationError(
            f"database {name!r} is a replica of {settings.replica_of!r}: a replica follows its "
            f"primary and is never migrated; migrate {settings.replica_of!r}"
        )
    if settings.migrations is None:
        with_migrations = sorted(
            other for other, each in router.settings.databases.items() if each.migrations
        )
        choices = ", ".join(repr(other) for other in with_migrations) or "(none)"
        raise ConfigurationError(
            f"database {name!r} has no migrations: set databases.{name}.migrations to its "
            f"Alembic script directory; databases with migrations: {choices}",
            problems=[(f"databases.{name}.migrations", "not set")],
        )

    @asynccontextmanager
    async def reach() -> AsyncIterator[Place]:
        yield Place(database)

    return Target(f"database:{name}", settings.migrations, f"databases.{name}.migrations", reach)


def _tenant_place(
    tenancy: Tenancy, tenant: str, *, listed: bool
) -> Callable[[], AbstractAsyncContextManager[Place]]:
    @asynccontextmanager
    async def reach() -> AsyncIterator[Place]:
        async with tenancy.storage(tenant, listed=listed) as storage:
            yield Place(storage.database, storage.schema, storage.search_path)

    return reach
