"""Health checks: ping every database, report status, latency and pool figures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.pool import QueuePool

from .outages import outage_reason
from .registry import Database
from .replicas.rotation import ReplicaStatus


@dataclass(frozen=True, slots=True)
class PoolStats:
    """What a connection pool holds at one moment."""

    size: int
    """Configured ``pool_size`` (0 for pools without one)."""
    checked_out: int
    """Connections lent out right now."""
    idle: int
    """Connections open and waiting in the pool."""
    overflow: int
    """Connections opened beyond ``pool_size`` (negative while the pool is still filling)."""


@dataclass(frozen=True, slots=True)
class DatabaseHealth:
    """The result of pinging one database."""

    name: str
    status: Literal["up", "down"]
    latency_ms: float | None
    """Round trip of ``SELECT 1``, connection included; None when down."""
    required: bool
    """Whether the service is unhealthy while this database is down."""
    pool: PoolStats
    error: str | None = None
    """Why it is down, in words that hold no address or secret."""
    replicas: tuple[ReplicaStatus, ...] = ()
    """For a replica: every server under its name, in rotation or not, why, and its lag."""


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The health of every database of a router."""

    databases: dict[str, DatabaseHealth] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every required database answered."""
        return all(db.status == "up" for db in self.databases.values() if db.required)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form, as served by ``GET /health/databases``."""
        return {
            "status": "ok" if self.ok else "unavailable",
            "databases": {name: asdict(db) for name, db in self.databases.items()},
        }


def pool_stats(database: Database) -> PoolStats:
    """The pool figures of *database*'s engine."""
    pool = database.engine.pool
    if isinstance(pool, QueuePool):
        return PoolStats(
            size=pool.size(),
            checked_out=pool.checkedout(),
            idle=pool.checkedin(),
            overflow=pool.overflow(),
        )
    return PoolStats(size=0, checked_out=0, idle=0, overflow=0)


async def check_databases(databases: Iterable[Database]) -> HealthReport:
    """Ping every database at once, each bounded by its connect timeout."""
    results = await asyncio.gather(*(_check(db) for db in databases))
    return HealthReport({result.name: result for result in results})


async def _check(database: Database) -> DatabaseHealth:
    settings = database.settings
    required = not (database.is_replica and settings.fallback == "primary")
    started = time.perf_counter()
    error: str | None = None
    try:
        await asyncio.wait_for(_ping(database), settings.connect_timeout + settings.pool_timeout)
    except Exception as exc:
        error = outage_reason(exc) or f"the check failed ({type(exc).__name__})"
    latency = None if error else round((time.perf_counter() - started) * 1000, 3)
    return DatabaseHealth(
        name=database.name,
        status="down" if error else "up",
        latency_ms=latency,
        required=required,
        pool=pool_stats(database),
        error=error,
    )


async def _ping(database: Database) -> None:
    async with database.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
