"""dbrouter: named async SQLAlchemy databases, replicas and tenants for FastAPI."""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from .errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    DBRouterError,
    RouterClosedError,
    TenantError,
    TenantResolutionError,
    UnknownDatabaseError,
    UnknownTenantError,
)
from .health import DatabaseHealth, HealthReport, PoolStats
from .router import DatabaseRouter
from .settings import DatabaseSettings, RouterSettings, TenancySettings, TenantSettings

__all__ = [
    "ConfigurationError",
    "DBRouterError",
    "DatabaseHealth",
    "DatabaseRouter",
    "DatabaseSettings",
    "DatabaseUnavailableError",
    "HealthReport",
    "PoolStats",
    "RouterClosedError",
    "RouterSettings",
    "TenancySettings",
    "TenantError",
    "TenantResolutionError",
    "TenantSettings",
    "UnknownDatabaseError",
    "UnknownTenantError",
    "get_db",
]
__version__ = "0.1.0"

# The FastAPI edge loads on first use, so the core works where FastAPI is not installed.
_FASTAPI_NAMES = frozenset({"get_db"})

if _TYPE_CHECKING:
    from .fastapi import get_db


def __getattr__(name: str) -> _Any:
    if name in _FASTAPI_NAMES:
        return getattr(_importlib.import_module(".fastapi", __name__), name)
    raise AttributeError(f"module 'dbrouter' has no attribute {name!r}")
