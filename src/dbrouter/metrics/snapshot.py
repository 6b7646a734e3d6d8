"""Every figure of a router at one moment, as plain data: what `DatabaseRouter.metrics`
returns and what every exporter reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..events import EngineKind
from .histograms import HistogramSnapshot

__all__ = [
    "BudgetMetrics",
    "MetricsSnapshot",
    "PoolMetrics",
    "ReplicaServerMetrics",
    "TenantMetrics",
]


@dataclass(frozen=True, slots=True)
class PoolMetrics:
    """One connection pool, by the OpenTelemetry semantic conventions
    (``db.client.connection.*``)."""

    name: str
    """The pool name: ``primary``, ``replica@10.0.0.7:5432`` for a replica server,
    ``tenant:acme`` for a tenant engine."""
    kind: EngineKind
    """What the pool serves: a named database, a replica server or a tenant."""
    used: int
    """Connections checked out (``db.client.connection.count``, state ``used``)."""
    idle: int
    """Connections open and waiting in the pool (state ``idle``)."""
    max: int
    """The most connections the pool opens (``db.client.connection.max``)."""
    idle_max: int
    """The most idle connections it keeps (``db.client.connection.idle.max``)."""
    idle_min: int
    """The fewest idle connections it keeps open (``db.client.connection.idle.min``)."""
    pending_requests: int
    """Checkouts waiting for a connection now (``db.client.connection.pending_requests``)."""
    timeouts: int
    """Checkouts that timed out so far (``db.client.connection.timeouts``)."""
    create_time: HistogramSnapshot
    """Seconds to open a connection (``db.client.connection.create_time``)."""
    wait_time: HistogramSnapshot
    """Seconds to obtain a connection, timeouts included (``db.client.connection.wait_time``)."""
    use_time: HistogramSnapshot
    """Seconds from checkout to return (``db.client.connection.use_time``)."""


@dataclass(frozen=True, slots=True)
class ReplicaServerMetrics:
    """One server of a replica, as its probe last saw it."""

    database: str
    """The replica's name."""
    pool: str
    """The server's pool name, ``<database>@<host>:<port>``."""
    in_rotation: bool
    """Whether it serves reads now."""
    reason: str | None
    """Why not, while out of rotation."""
    lag_seconds: float | None
    """Replay lag in seconds (None: not measured yet)."""
    lag_bytes: int | None
    """WAL bytes it has not replayed (None: not measured yet)."""


@dataclass(frozen=True, slots=True)
class TenantMetrics:
    """Tenant engines and lookups."""

    engines: int
    """Tenant engines cached now (at most ``tenancy.max_engines``)."""
    built: int
    """Tenant engines built so far."""
    evicted: int
    """Tenant engines evicted so far (cache size, idle expiry, re-pointing, removal)."""
    lookups: dict[str, int] = field(default_factory=dict)
    """Lookups of tenants not declared in the settings, by result: ``found``, ``unknown``."""


@dataclass(frozen=True, slots=True)
class BudgetMetrics:
    """The ``max_connections`` budget of the process."""

    limit: int
    """``max_connections``."""
    in_use: int
    """Server connections open (or being opened) now."""
    waiting: int
    """New connections waiting for a slot now."""
    waits: int
    """New connections that had to wait for a slot, and got one, so far."""
    exhausted: int
    """New connections that got no slot within their ``pool_timeout`` so far."""


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Every figure of a router at one moment. No URL, host credential or password
    appears in it: pools are named, servers shown as ``host:port``."""

    pools: dict[str, PoolMetrics] = field(default_factory=dict)
    """Every pool, by pool name: named databases, replica servers, tenant engines."""
    replicas: dict[str, ReplicaServerMetrics] = field(default_factory=dict)
    """Every server of every PostgreSQL replica, by pool name."""
    unavailable: dict[str, dict[str, int]] = field(default_factory=dict)
    """Requests answered 503 so far, by database and reason."""
    consistency_reads: dict[str, dict[str, int]] = field(default_factory=dict)
    """Reads that carried a consistency token so far, by replica and where they were
    served (``replica`` or ``primary``)."""
    tenants: TenantMetrics | None = None
    """Tenant engines and lookups; None without tenancy."""
    budget: BudgetMetrics | None = None
    """The connection budget; None without ``max_connections``."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form: nested dicts, lists and numbers."""
        return asdict(self)
