"""Replica probes in tests: a replica that mirrors its primary is always caught up, and a
primary shares its connection with the test, so neither is asked anything."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..replicas.probes import ReplicaReading, read_replica

if TYPE_CHECKING:
    from ..databases import Database

__all__ = ["MirrorProber"]

# The highest WAL position there is: a mirroring replica has replayed every write.
_END_OF_WAL = 2**64 - 1


class MirrorProber:
    """The `ReplicaProber` of a router under test.

    The primary is never queried: its connection is the test's, busy with the test. A
    replica that mirrors its primary is in recovery and has replayed everything, so it
    stays in rotation and serves reads that carry a consistency token. A replica that
    does not mirror (a test that needs the real standby) is probed as usual, on its own
    server; against an unknown primary position its lag counts as none.
    """

    def __init__(self, *, mirror: bool) -> None:
        self.mirror = mirror

    async def read_primary(self, database: Database) -> int:
        """The lowest position: no replica is ever behind it."""
        return 0

    async def read_replica(self, database: Database) -> ReplicaReading:
        """Caught up when mirroring; what the standby says otherwise."""
        if self.mirror:
            return ReplicaReading(in_recovery=True, replay_lsn=_END_OF_WAL, replay_age=0.0)
        return await read_replica(database)
