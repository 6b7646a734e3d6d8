"""Testing applications that use dbrouter: a pytest plugin (``pytest_dbrouter``) with
per-test isolation across every database and tenant, replicas mirroring their primary,
throwaway tenants, an HTTP client for the app, and throwaway PostgreSQL servers. See
docs/testing.md.

Install the ``testing`` extra: ``pip install "fastapi-dbrouter[testing]"``.
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from .errors import IsolationError, UndeclaredDatabaseError

__all__ = [
    "IsolatingEngineFactory",
    "Isolation",
    "IsolationError",
    "TestEnvironment",
    "ThrowawayTenants",
    "UndeclaredDatabaseError",
]

# Loaded on first use: the harness of servers (``dbrouter.testing.postgres``) needs none.
_HOMES = {
    "IsolatingEngineFactory": ".factory",
    "Isolation": ".isolation",
    "TestEnvironment": ".environment",
    "ThrowawayTenants": ".tenants",
}

if _TYPE_CHECKING:
    from .environment import TestEnvironment
    from .factory import IsolatingEngineFactory
    from .isolation import Isolation
    from .tenants import ThrowawayTenants


def __getattr__(name: str) -> _Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'dbrouter.testing' has no attribute {name!r}")
    return getattr(_importlib.import_module(home, __name__), name)
