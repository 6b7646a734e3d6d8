"""The side of a script directory's ``env.py``: running its revisions on the connection
(and, for a schema tenant, in the schema) that dbrouter hands it.

``dbrouter migrate init`` writes an ``env.py`` that calls `run_migrations`. dbrouter runs
it once per target, with the target's connection already in a transaction: the
migration takes the target's advisory lock, pins the schema of a schema tenant and
commits in that transaction, so Alembic neither begins nor commits one of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from alembic import context
from alembic.config import Config
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from ..errors import ConfigurationError

__all__ = ["VERSION_TABLE", "Binding", "bind", "run_migrations"]

VERSION_TABLE = "alembic_version"
"""The table that holds a target's revision: in the tenant's schema for a schema tenant."""

_ATTRIBUTE = "dbrouter.binding"
# Where the revision is recorded is dbrouter's to say: `status` reads it from there.
_RESERVED = frozenset(
    {"connection", "url", "version_table", "version_table_schema", "as_sql", "dialect_name"}
)

IncludeName = Callable[[str | None, str, dict[str, str | None]], bool]


@dataclass(frozen=True, slots=True)
class Binding:
    """What ``env.py`` runs on: one target's connection, in its migration transaction."""

    target: str
    """``database:<name>`` or ``tenant:<id>``."""
    connection: Connection
    schema: str | None = None
    """A schema tenant's schema: the search path is pinned to it, and the version table
    lives in it."""


def bind(config: Config, binding: Binding) -> Config:
    """*config*, handing *binding* to the ``env.py`` it runs."""
    config.attributes[_ATTRIBUTE] = binding
    return config


def run_migrations(
    target_metadata: MetaData | Sequence[MetaData] | None = None, **options: Any
) -> None:
    """Run this script directory's revisions on the target dbrouter hands to ``env.py``.

    *target_metadata* is the application's metadata, which ``dbrouter migrate revision
    --autogenerate`` compares the target with. *options* go to Alembic's
    ``context.configure`` (``compare_type``, ``render_as_batch``, ``include_object``,
    ...), except the connection and where the version table lives, which are dbrouter's.
    """
    binding = context.config.attributes.get(_ATTRIBUTE)
    if not isinstance(binding, Binding):
        raise ConfigurationError(
            "this Alembic script directory takes its connections from dbrouter: run it with "
            "dbrouter migrate upgrade (or dbrouter.migrations.upgrade), which migrates every "
            "database and tenant with the URL and schema the application uses"
        )
    reserved = sorted(_RESERVED & set(options))
    if reserved:
        raise ConfigurationError(
            f"run_migrations: {', '.join(reserved)} cannot be set in env.py: dbrouter "
            "gives each target its connection and keeps its version table"
        )
    if binding.schema is not None:
        options["include_name"] = _without_version_table(options.get("include_name"))
    context.configure(
        connection=binding.connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        version_table_schema=binding.schema,
        **options,
    )
    with context.begin_transaction():
        context.run_migrations()


def _without_version_table(include_name: IncludeName | None) -> IncludeName:
    """An ``include_name`` hook that leaves the tenant's version table out of
    autogenerate: the tenant's tables are compared as unqualified names (the search path is
    the tenant's schema), and Alembic only leaves out a version table it finds in its own
    ``version_table_schema``."""

    def include(name: str | None, type_: str, parent_names: dict[str, str | None]) -> bool:
        if type_ == "table" and name == VERSION_TABLE and parent_names.get("schema_name") is None:
            return False
        return include_name is None or include_name(name, type_, parent_names)

    return include
