"""``dbrouter migrate init``: a new Alembic script directory wired to dbrouter, and
``dbrouter migrate revision``: a new revision in one."""

from __future__ import annotations

import keyword
import re
from importlib.resources import files
from pathlib import Path
from string import Template

from alembic import command as alembic_command
from alembic.script import Script
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from ..errors import ConfigurationError
from ..router import DatabaseRouter
from .environment import Binding
from .fleet import prepare
from .locks import alembic_turn
from .scripts import Scripts
from .targets import Place, Selection, Target, select_targets, tenant_scripts

__all__ = ["init", "revision"]

_TEMPLATE = files("dbrouter.migrations") / "template"
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_HINT = "\n# For example: from myapp.models import Base; target_metadata = Base.metadata"


def init(path: str | Path, *, metadata: str | None = None) -> Path:
    """Create the script directory *path* (new, or empty): an ``env.py`` that takes its
    connections from dbrouter, the template of new revisions and an empty ``versions/``.

    *metadata* (``myapp.models:Base.metadata``) is the application's metadata, which
    ``revision(..., autogenerate=True)`` compares with; without it ``env.py`` says where
    to set it. Returns the directory.
    """
    directory = Path(path)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ConfigurationError(
            f"{directory} already exists and is not an empty directory; "
            "name a new directory for the script directory"
        )
    imports, target = _metadata_code(metadata)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "versions").mkdir()
    env = Template((_TEMPLATE / "env.py.template").read_text(encoding="utf-8"))
    (directory / "env.py").write_text(
        env.substitute(imports=imports, metadata=target, hint="" if metadata else _HINT),
        encoding="utf-8",
    )
    for name in ("script.py.mako", "README"):
        (directory / name).write_text(
            (_TEMPLATE / name).read_text(encoding="utf-8"), encoding="utf-8"
        )
    return directory


def _metadata_code(metadata: str | None) -> tuple[str, str]:
    """The import line and the expression of ``env.py`` for *metadata*."""
    if metadata is None:
        return "", "None"
    module, _, attribute = metadata.partition(":")
    parts = [*module.split("."), *attribute.split(".")]
    if not (
        _DOTTED.fullmatch(module)
        and _DOTTED.fullmatch(attribute)
        and not any(keyword.iskeyword(part) for part in parts)
    ):
        raise ConfigurationError(
            f"metadata: {metadata!r} is not of the form module:attribute, such as "
            "myapp.models:Base.metadata"
        )
    name = attribute.split(".", 1)[0]
    return f"from {module} import {name}\n", attribute


async def revision(
    router: DatabaseRouter,
    message: str,
    *,
    database: str | None = None,
    tenants: bool = False,
    tenant: str | None = None,
    autogenerate: bool = False,
) -> Path:
    """Write a new revision, with *message*, in the script directory of *database* or,
    with *tenants*, of the tenants; returns its file.

    With *autogenerate* its operations are what the application's metadata (named in
    ``env.py``) has and the database does not: the database, or a tenant (*tenant*,
    else the first one listed), at head, is compared with it.
    """
    if (database is None) == (not (tenants or tenant is not None)):
        raise ConfigurationError(
            "revision: name the script directory: a database (--database NAME) or the "
            "tenants' (--tenants)"
        )
    target: Target | None = None
    if database is not None:
        (target,) = await select_targets(router, Selection.of([database], all_tenants=False))
        scripts = Scripts(target.scripts, key=target.key)
    else:
        scripts = Scripts(tenant_scripts(router), key="tenancy.migrations")
    if not autogenerate:
        return _written(alembic_command.revision(scripts.config(), message=message))
    if target is None:
        chosen = [] if tenant is None else [tenant]
        targets = await select_targets(
            router, Selection.of(tenants=chosen, all_tenants=tenant is None)
        )
        if not targets:
            raise ConfigurationError(
                "revision --autogenerate compares the metadata with a tenant at head, and "
                "there is no tenant yet: create one and upgrade it first"
            )
        target = targets[0]
    async with (
        target.reach() as place,
        place.database.engine.connect() as connection,
        connection.begin(),
    ):
        await prepare(connection, place)
        async with alembic_turn():
            written = await connection.run_sync(_autogenerate, scripts, message, target, place)
    return written


def _autogenerate(
    connection: Connection, scripts: Scripts, message: str, target: Target, place: Place
) -> Path:
    config = scripts.config(Binding(target.name, connection, place.schema))
    try:
        return _written(alembic_command.revision(config, message=message, autogenerate=True))
    except CommandError as exc:
        raise CommandError(f"{target.name}: {exc}") from exc


def _written(result: Script | list[Script | None] | None) -> Path:
    scripts = result if isinstance(result, list) else [result]
    found = [script for script in scripts if script is not None]
    assert found, "Alembic wrote no revision"
    return Path(found[0].path)
