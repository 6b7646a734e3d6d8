"""Migrations with Alembic over every database and tenant of a router (extra
``migrations``: ``pip install "fastapi-dbrouter[migrations]"``).

Each named database with ``migrations`` set, and each tenant when ``tenancy.migrations``
is set, is a target, reached with the URL, connection options and schema the application
itself uses::

    from dbrouter import migrations

    report = await migrations.upgrade(router)  # every database and tenant, to head
    assert report.ok, report.as_dict()

The same operations as ``dbrouter migrate``: `upgrade`, `downgrade`, `current`, `status`
(the drift check), `revision` and `init`; each command returns a `MigrationReport` with a
`TargetResult` per target. A script directory's ``env.py`` calls `run_migrations`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "MISSING_EXTRA",
    "MigrationProgress",
    "MigrationReport",
    "TargetResult",
    "current",
    "downgrade",
    "init",
    "revision",
    "run_migrations",
    "status",
    "upgrade",
]

MISSING_EXTRA = 'migrations need Alembic: pip install "fastapi-dbrouter[migrations]"'
"""What is said when the ``migrations`` extra is not installed."""

# Loaded on first use: `import dbrouter` and the command line work without Alembic.
_HOMES = {
    "MigrationProgress": ".progress",
    "MigrationReport": ".report",
    "TargetResult": ".report",
    "current": ".fleet",
    "downgrade": ".fleet",
    "status": ".fleet",
    "upgrade": ".fleet",
    "init": ".scaffold",
    "revision": ".scaffold",
    "run_migrations": ".environment",
}
_EXTRA_MODULES = frozenset({"alembic", "mako", "rich"})

if TYPE_CHECKING:
    from .environment import run_migrations
    from .fleet import current, downgrade, status, upgrade
    from .progress import MigrationProgress
    from .report import MigrationReport, TargetResult
    from .scaffold import init, revision


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'dbrouter.migrations' has no attribute {name!r}")
    try:
        module = importlib.import_module(home, __name__)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] in _EXTRA_MODULES:
            raise ModuleNotFoundError(MISSING_EXTRA, name=exc.name) from None
        raise
    return getattr(module, name)
