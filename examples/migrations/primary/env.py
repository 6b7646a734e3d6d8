"""Alembic environment of the primary's tables, wired to dbrouter: ``dbrouter migrate``
hands it the primary's connection. Autogenerate compares with `PrimaryBase`'s metadata."""

from dbrouter.migrations import run_migrations
from examples.migrations.models import PrimaryBase

run_migrations(PrimaryBase.metadata)
