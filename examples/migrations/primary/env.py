"""Alembic environment of the primary's tables, wired to dbrouter: ``dbrouter migrate``
hands it the primary's connection. Autogenerate compares with `Base`'s metadata."""

from dbrouter.migrations import run_migrations
from examples.migrations.models import Base

run_migrations(Base.metadata)
