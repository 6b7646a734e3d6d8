"""Alembic environment of every tenant's tables, wired to dbrouter: ``dbrouter migrate``
runs it once per tenant, with the search path pinned to the tenant's schema and the
tenant's own ``alembic_version`` table in it. Autogenerate compares with `TenantBase`'s
metadata."""

from dbrouter.migrations import run_migrations
from examples.migrations.models import TenantBase

run_migrations(TenantBase.metadata)
