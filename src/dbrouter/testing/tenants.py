"""Throwaway tenants: created for a test (or a session) with `DatabaseRouter.create_tenant`
and dropped with `DatabaseRouter.drop_tenant` when it ends.

A database cannot be created or dropped inside a transaction, so tenants are made outside
the tests' isolation, by the environment's own router, and dropped once the test's
transactions are rolled back. What a test writes in its tenant is rolled back like
everything else; the tenant itself goes when it is dropped.
"""

from __future__ import annotations

import uuid

from .environment import TestEnvironment
from .isolation import database_key
from .preparation import create_tables, tenant_place

__all__ = ["ThrowawayTenants"]


class ThrowawayTenants:
    """Tenants made on demand in *environment*, all dropped by `drop_all`."""

    def __init__(self, environment: TestEnvironment) -> None:
        self._environment = environment
        self._created: list[str] = []

    @property
    def created(self) -> tuple[str, ...]:
        """The tenants made so far and not dropped yet, oldest first."""
        return tuple(self._created)

    async def create(self, tenant: str | None = None) -> str:
        """Create a tenant — *tenant*, or a new id — with its tables (migrated to head, or
        made from the metadata); its id."""
        tenant = tenant or f"t{uuid.uuid4().hex[:12]}"
        environment = self._environment
        await environment.admin.create_tenant(tenant)  # migrated, when tenants have migrations
        self._created.append(tenant)
        if environment.metadata is not None:
            await create_tables(environment.metadata, [tenant_place(environment.settings, tenant)])
        return tenant

    async def drop_all(self) -> None:
        """Drop every tenant made here, the newest first."""
        environment = self._environment
        while self._created:
            tenant = self._created.pop()
            url, schema = tenant_place(environment.settings, tenant)
            if schema is None:
                # The tests' connection to the tenant's database goes before the database.
                await environment.connections.close(
                    database_key(url.translate_connect_args(username="user"))
                )
            await environment.admin.drop_tenant(tenant)
