"""dbrouter: named async SQLAlchemy databases, replicas and tenants for FastAPI."""

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
from .fastapi import get_db
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
