"""Health checks: ping every database, report status, latency, pool figures and, for a
database that is down, why."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.pool import QueuePool

from .outages import FailureKind, classify, server_outage
from .registry import Database
from .replicas.rotation import ReplicaStatus

__all__ = ["DatabaseHealth", "HealthReport", "PoolStats", "check_databases", "pool_stats"]


@dataclass(frozen=True, slots=True)
class PoolStats:
    """What a connection pool holds at one moment.

    ``in_use + idle`` connections are open; at most ``max`` can be. The pool does not
    count the requests waiting for a connection, so neither does this.
    """

    size: int
    """Configured ``pool_size`` (0 for pools without one)."""
    in_use: int
    """Connections lent out right now."""
    idle: int
    """Connections open and waiting in the pool."""
    overflow_in_use: int
    """Connections open beyond ``pool_size`` (never negative); all of them are in use."""
    max: int
    """The most connections the pool opens: ``pool_size + max_overflow``."""


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
    """Why it is down, in words that hold no address or secret (a `FailureReason` text)."""
    error_kind: FailureKind | None = None
    """The same as one word of a fixed set (``authentication failed``, ``unreachable``…)."""
    sqlstate: str | None = None
    """The PostgreSQL error code of the failure, when there is one."""
    replicas: tuple[ReplicaStatus, ...] = ()
    """For a replica: every server under its name, in rotation or not, why, and its lag."""


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The health of every database of a router."""

    databases: dict[str, DatabaseHealth] = field(default_factory=dict)
    """Every database, by name, in the order the settings declare them."""

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
    if not isinstance(pool, QueuePool):
        return PoolStats(size=0, in_use=0, idle=0, overflow_in_use=0, max=0)
    size = pool.size()
    # overflow() starts at -pool_size and counts every connection the pool opens.
    return PoolStats(
        size=size,
        in_use=pool.checkedout(),
        idle=pool.checkedin(),
        overflow_in_use=max(0, pool.overflow()),
        max=size + database.settings.max_overflow,
    )


async def check_databases(databases: Iterable[Database]) -> HealthReport:
    """Ping every database at once, each bounded by its connect timeout; the report lists
    them in the order given."""
    results = await asyncio.gather(*(_check(db) for db in databases))
    return HealthReport({result.name: result for result in results})


async def _check(database: Database) -> DatabaseHealth:
    settings = database.settings
    required = not (database.is_replica and settings.fallback == "primary")
    started = time.perf_counter()
    try:
        await asyncio.wait_for(_ping(database), settings.connect_timeout + settings.pool_timeout)
    except Exception as exc:
        failure = classify(exc)
        if database.availability is not None and server_outage(exc):
            database.availability.lost(failure.text)
        return DatabaseHealth(
            name=database.name,
            status="down",
            latency_ms=None,
            required=required,
            pool=pool_stats(database),
            error=failure.text,
            error_kind=failure.kind,
            sqlstate=failure.sqlstate,
        )
    if database.availability is not None:
        database.availability.regained()
    return DatabaseHealth(
        name=database.name,
        status="up",
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
        required=required,
        pool=pool_stats(database),
    )


async def _ping(database: Database) -> None:
    async with database.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
