"""Probing the servers of a replica set: one query per server, each bounded by its
connect timeout, and no waiting for a pooled connection when none is free."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from sqlalchemy import text
from sqlalchemy.pool import QueuePool

from .lsn import parse_lsn

if TYPE_CHECKING:
    from ..databases import Database

__all__ = [
    "PostgresProber",
    "ReplicaProber",
    "ReplicaReading",
    "probe",
    "read_primary",
    "read_replica",
]

_T = TypeVar("_T")

_PRIMARY_PROBE: Final = text("SELECT pg_current_wal_lsn()::text")
_REPLICA_PROBE: Final = text(
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
    "EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8"
)


@dataclass(frozen=True, slots=True)
class ReplicaReading:
    """What one probe of a replica found."""

    in_recovery: bool
    replay_lsn: int | None
    replay_age: float | None
    """Seconds since the commit time of the last transaction replayed."""


async def probe(
    database: Database, read: Callable[[Database], Awaitable[_T]]
) -> _T | Exception | None:
    """*read*'s result on *database* within its connect timeout, or the error it raised;
    None when the pool has no connection to spare."""
    if _pool_exhausted(database):
        # Every connection is serving requests: waiting for one would say nothing about
        # the server, and timing out would take a busy replica out of rotation.
        return None
    try:
        return await asyncio.wait_for(read(database), database.settings.connect_timeout)
    except Exception as exc:  # every failure is a verdict; outage_reason sorts them
        return exc


def _pool_exhausted(database: Database) -> bool:
    pool = database.engine.pool
    if not isinstance(pool, QueuePool):
        return False
    return pool.checkedout() >= pool.size() + database.settings.max_overflow


async def read_primary(database: Database) -> int:
    """The primary's current WAL write position."""
    async with database.engine.connect() as connection:
        return parse_lsn((await connection.execute(_PRIMARY_PROBE)).scalar_one())


async def read_replica(database: Database) -> ReplicaReading:
    """Whether the replica is in recovery, how far it has replayed, and how old that is."""
    async with database.engine.connect() as connection:
        in_recovery, replay_lsn, replay_age = (await connection.execute(_REPLICA_PROBE)).one()
    return ReplicaReading(
        in_recovery=bool(in_recovery),
        replay_lsn=None if replay_lsn is None else parse_lsn(replay_lsn),
        replay_age=None if replay_age is None else max(0.0, float(replay_age)),
    )


class ReplicaProber(Protocol):
    """What a `ReplicaSet` reads from its servers in each probe round.

    `PostgresProber` asks real PostgreSQL servers; another prober (in a test, say) can
    answer with readings of its own. Each read runs within the database's connect
    timeout, and an exception it raises is the verdict on that server.
    """

    async def read_primary(self, database: Database) -> int:
        """The primary's current WAL write position."""
        ...

    async def read_replica(self, database: Database) -> ReplicaReading:
        """Whether the replica is in recovery, how far it has replayed, and how old that is."""
        ...


class PostgresProber:
    """The prober of real servers: `read_primary` and `read_replica`, one query each on a
    connection of the database's own pool."""

    read_primary = staticmethod(read_primary)
    read_replica = staticmethod(read_replica)
