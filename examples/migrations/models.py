"""The example's tables: plans on the primary, projects in every tenant's schema.

Each kind of database has a metadata of its own, and so an Alembic script directory of
its own: ``primary/`` compares with `PrimaryBase`'s metadata, ``tenants/`` with
`TenantBase`'s.
"""

from __future__ import annotations

from sqlalchemy import MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedAsDataclass, mapped_column

from dbrouter.models import NAMING_CONVENTION, TimestampMixin

__all__ = ["Plan", "PrimaryBase", "Project", "TenantBase"]


class PrimaryBase(MappedAsDataclass, DeclarativeBase):
    """The primary's tables."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TenantBase(MappedAsDataclass, DeclarativeBase):
    """The tables every tenant has, in its own schema."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Plan(PrimaryBase):
    """A plan a tenant can be on: one table, on the primary, for everyone."""

    __tablename__ = "plans"

    id: Mapped[int] = mapped_column(primary_key=True, init=False)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    price_cents: Mapped[int] = mapped_column(default=0)


class Project(TimestampMixin, TenantBase):
    """A tenant's project, in the tenant's schema."""

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True, init=False)
    name: Mapped[str] = mapped_column(String(200))
    done: Mapped[bool] = mapped_column(default=False, server_default="false")
