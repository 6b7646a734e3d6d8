"""The connection pool every engine of a router gets, and what is measured in it.

`MeteredPool` is SQLAlchemy's asyncio queue pool that always counts the server
connections it holds open (per connection opened or closed, never per checkout). Once a
`PoolMeter` is attached it also measures what the OpenTelemetry semantic conventions name:
requests waiting for a connection, the time they wait, checkouts that time out, and how
long connections take to create and are used. Without a meter a checkout costs one
attribute read more than SQLAlchemy's own pool.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import (
    AsyncAdaptedQueuePool,
    ConnectionPoolEntry,
    Pool,
    PoolProxiedConnection,
)

from .histograms import Histogram

__all__ = ["MeteredPool", "PoolCounts", "PoolMeter", "attach_meter", "pool_counts"]

_USED_SINCE = "dbrouter_used_since"


class PoolMeter:
    """The measurements of one pool (mutable, updated where they happen)."""

    __slots__ = ("create_time", "name", "pending", "timeouts", "use_time", "wait_time")

    def __init__(self, name: str) -> None:
        self.name = name
        """The pool name (``primary``, ``replica@host:5432``, ``tenant:acme``)."""
        self.pending = 0
        """Checkouts under way: waiting for a free connection or for a new one."""
        self.timeouts = 0
        """Checkouts that found no connection within ``pool_timeout``."""
        self.create_time = Histogram()
        """Seconds to open a new server connection, ready for use."""
        self.wait_time = Histogram()
        """Seconds a checkout took, until it had a connection or timed out."""
        self.use_time = Histogram()
        """Seconds between a checkout and the connection's return to the pool."""


class MeteredPool(AsyncAdaptedQueuePool):
    """SQLAlchemy's asyncio queue pool, counting its open connections and, with a `meter`,
    measuring every checkout."""

    meter: PoolMeter | None = None
    """The measurements of this pool; None until metrics are collected."""

    # SQLAlchemy names a pool's logger after its class; this one logs where SQLAlchemy's
    # own pool does (``sqlalchemy.pool``), not among dbrouter's state changes.
    _sqla_logger_namespace = "sqlalchemy.pool.impl.AsyncAdaptedQueuePool"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.opened = 0
        """Server connections this pool holds open, checked out or idle."""
        super().__init__(*args, **kwargs)

    def connect(self) -> PoolProxiedConnection:
        """A connection from the pool, measured when a meter is attached."""
        meter = self.meter
        if meter is None:
            return super().connect()
        meter.pending += 1
        started = time.perf_counter()
        try:
            connection = super().connect()
        except sa_exc.TimeoutError:
            meter.timeouts += 1
            raise
        finally:
            meter.pending -= 1
            ended = time.perf_counter()
            meter.wait_time.observe(ended - started)
        connection.info[_USED_SINCE] = ended
        return connection

    def recreate(self) -> MeteredPool:
        """The pool that replaces this one when its engine is disposed: the same meter."""
        pool = super().recreate()
        assert isinstance(pool, MeteredPool)
        pool.meter = self.meter
        return pool

    def _should_wrap_creator(self, creator: Any) -> Any:
        # Every new server connection of this pool is made by the function returned here.
        invoke = super()._should_wrap_creator(creator)

        def counted(record: ConnectionPoolEntry) -> Any:
            connection = invoke(record)
            self.opened += 1
            return connection

        return counted

    def _close_connection(self, connection: Any, *, terminate: bool = False) -> None:
        # Every server connection of this pool is closed here, whichever way it ends.
        try:
            super()._close_connection(connection, terminate=terminate)
        finally:
            self.opened = max(0, self.opened - 1)


@dataclass(frozen=True, slots=True)
class PoolCounts:
    """What a pool holds at one moment."""

    used: int
    """Connections checked out."""
    idle: int
    """Connections open and waiting in the pool."""
    max: int
    """The most connections the pool opens: ``pool_size + max_overflow``."""
    idle_max: int
    """The most idle connections it keeps (``pool_size``: overflow ones close on return)."""
    idle_min: int
    """The fewest idle connections it keeps open (0: none is opened ahead of use)."""


def pool_counts(pool: MeteredPool) -> PoolCounts:
    """The counts of *pool* now, read without I/O."""
    size = pool.size()
    used = max(0, min(pool.checkedout(), pool.opened))
    return PoolCounts(
        used=used,
        idle=max(0, pool.opened - used),
        max=size + max(0, pool._max_overflow),
        idle_max=size,
        idle_min=0,
    )


def attach_meter(pool: Pool, meter: PoolMeter) -> bool:
    """Measure *pool* with *meter*, and the pools that replace it when its engine is
    disposed; False when it is not a `MeteredPool` (an in-memory SQLite database, a
    maintenance engine) or is measured already."""
    if not isinstance(pool, MeteredPool) or pool.meter is not None:
        return False
    pool.meter = meter

    def connected(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # The pool stamps each connection attempt's start; this runs once it is ready.
        started = getattr(record, "starttime", None)
        if started is not None:
            meter.create_time.observe(max(0.0, time.time() - started))

    def checked_in(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        used_since = record.info.pop(_USED_SINCE, None)
        if used_since is not None:
            meter.use_time.observe(time.perf_counter() - used_since)

    # Listeners of a pool pass on to the pool that replaces it (recreate()).
    event.listen(pool, "connect", connected)
    event.listen(pool, "checkin", checked_in)
    return True
