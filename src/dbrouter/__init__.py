"""dbrouter: named async SQLAlchemy databases, replicas and tenants for FastAPI."""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from .context import current_tenant
from .databases import Database
from .engines import EngineFactory, EngineTarget
from .errors import (
    BudgetExhaustedError,
    ConfigurationError,
    DatabaseUnavailableError,
    DBRouterError,
    ReadOnlySessionError,
    RouterClosedError,
    SessionClosedError,
    TenantError,
    TenantExistsError,
    TenantResolutionError,
    UnknownDatabaseError,
    UnknownTenantError,
    UnmanagedTenantError,
)
from .events import EventBus
from .health import DatabaseHealth, HealthReport, PoolStats
from .lending import LentSession, TenantLentSession
from .lifecycle import State
from .metrics import (
    BudgetMetrics,
    HistogramSnapshot,
    MetricsSnapshot,
    PoolMetrics,
    ReplicaServerMetrics,
    RouterMetrics,
    TenantMetrics,
)
from .replicas import ReplicaSet
from .router import DatabaseRouter
from .settings import (
    DatabaseSettings,
    ReplicaHostSettings,
    RouterSettings,
    TenancySettings,
    TenantSettings,
)
from .tenancy.directory import ListingTenantCatalog, TenantCatalog
from .tenancy.resolvers import (
    CallableTenantResolver,
    ChainTenantResolver,
    HeaderTenantResolver,
    PathTenantResolver,
    SubdomainTenantResolver,
    TenantRequest,
    TenantResolver,
)
from .tenancy.routing import Tenancy
from .tenancy.strategy import TenancyStrategy

__all__ = [
    "BudgetExhaustedError",
    "BudgetMetrics",
    "CallableTenantResolver",
    "ChainTenantResolver",
    "ConfigurationError",
    "DBRouterError",
    "Database",
    "DatabaseHealth",
    "DatabaseRouter",
    "DatabaseSettings",
    "DatabaseUnavailableError",
    "EngineFactory",
    "EngineTarget",
    "EventBus",
    "HeaderTenantResolver",
    "HealthReport",
    "HistogramSnapshot",
    "LentSession",
    "ListingTenantCatalog",
    "MetricsSnapshot",
    "PathTenantResolver",
    "PoolMetrics",
    "PoolStats",
    "ReadOnlySessionError",
    "ReplicaHostSettings",
    "ReplicaServerMetrics",
    "ReplicaSet",
    "RouterClosedError",
    "RouterMetrics",
    "RouterSettings",
    "SessionClosedError",
    "State",
    "SubdomainTenantResolver",
    "Tenancy",
    "TenancySettings",
    "TenancyStrategy",
    "TenantCatalog",
    "TenantError",
    "TenantExistsError",
    "TenantLentSession",
    "TenantMetrics",
    "TenantRequest",
    "TenantResolutionError",
    "TenantResolver",
    "TenantSettings",
    "UnknownDatabaseError",
    "UnknownTenantError",
    "UnmanagedTenantError",
    "current_tenant",
    "get_db",
    "get_tenant",
    "get_tenant_db",
]
__version__ = "0.1.0"

# The FastAPI edge loads on first use, so the core works where FastAPI is not installed.
_FASTAPI_NAMES = frozenset({"get_db", "get_tenant", "get_tenant_db"})

if _TYPE_CHECKING:
    from .fastapi import get_db, get_tenant, get_tenant_db


def __getattr__(name: str) -> _Any:
    if name in _FASTAPI_NAMES:
        return getattr(_importlib.import_module(".fastapi", __name__), name)
    raise AttributeError(f"module 'dbrouter' has no attribute {name!r}")
