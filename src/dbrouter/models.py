"""Declarative base classes for application models.

`Base` is a dataclass-mapped declarative base whose constraint and index names follow the
PostgreSQL naming convention, so migrations get stable, predictable names.
`TimestampMixin` adds ``created_at`` and ``updated_at`` set by the database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import DateTime, MetaData, func
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedAsDataclass, mapped_column

__all__ = [
    "NAMING_CONVENTION",
    "Base",
    "TimestampMixin",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Names of indexes and constraints: ``ix_``, ``uq_``, ``ck_``, ``fk_``, ``pk_`` prefixes."""


class Base(MappedAsDataclass, DeclarativeBase):
    """Declarative base: models are dataclasses; constraints follow `NAMING_CONVENTION`."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TimestampMixin(MappedAsDataclass):
    """``created_at`` and ``updated_at``, both filled in by the database.

    ``eager_defaults`` reads them back in the INSERT or UPDATE itself (RETURNING), so they
    are readable after commit without a lazy load.
    """

    __mapper_args__: ClassVar[dict[str, Any]] = {"eager_defaults": True}

    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), init=False
    )
    """When the row was inserted (database clock)."""
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), init=False
    )
    """When the row was last updated (database clock)."""
