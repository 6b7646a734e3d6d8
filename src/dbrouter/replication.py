"""Routing reads to replicas: which server serves a replica session, and the positions
that make read-your-writes hold."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from .budget import ConnectionBudget
from .consistency import current_consistency
from .engines import SessionFactory, build_engine
from .errors import DatabaseUnavailableError
from .lending import Route
from .readonly import read_only_sessionmaker
from .registry import Database, DatabaseRegistry, drain_and_dispose
from .replicas import ReplicaMember, ReplicaSet, ReplicaStatus
from .urls import is_postgresql


@dataclass(frozen=True, slots=True)
class ReplicaRoute:
    """Where one replica session goes."""

    database: Database
    """The server it reads from: a replica, or the primary when falling back."""
    sessionmaker: Callable[[], AsyncSession]
    """Read-only sessions on that server."""
    member: ReplicaMember | None = None
    """The replica chosen; None on the primary or on a replica that is not probed."""
    replica_set: ReplicaSet | None = None
    """The set the member belongs to."""

    def report_outage(self) -> None:
        """Take the member out of rotation until the probe sees it healthy again."""
        if self.member is not None and self.replica_set is not None:
            self.replica_set.report_failure(self.member)


class ReplicaGroup:
    """The servers answering under one replica name, and the primary they replicate."""

    def __init__(
        self, replica: Database, primary: Database, budget: ConnectionBudget | None = None
    ) -> None:
        self.name = replica.name
        self.settings = replica.settings
        self.primary = primary
        self.members: tuple[Database, ...] = (replica, *self._extra_hosts(replica, budget))
        self._read_only: dict[int, SessionFactory] = {
            id(database.engine): read_only_sessionmaker(database.engine)
            for database in (*self.members, primary)
        }
        self.closed = False
        self.replica_set: ReplicaSet | None = None
        if is_postgresql(replica.settings.url):
            weights = [replica.settings.weight, *(host.weight for host in self.settings.hosts)]
            self.replica_set = ReplicaSet(
                primary,
                [
                    ReplicaMember(db, weight)
                    for db, weight in zip(self.members, weights, strict=True)
                ],
                policy=self.settings.balance,
            )

    @staticmethod
    def _extra_hosts(replica: Database, budget: ConnectionBudget | None) -> list[Database]:
        extra = []
        for number, host in enumerate(replica.settings.hosts, start=2):
            settings = replica.settings.model_copy(update={"url": host.url, "hosts": []})
            name = f"{replica.name}#{number}"
            engine = build_engine(settings, name=name)
            if budget is not None:
                budget.instrument(engine, name=name, timeout=settings.pool_timeout)
            extra.append(Database(name, settings, engine, read_only_sessionmaker(engine)))
        return extra

    def read_only(self, database: Database) -> SessionFactory:
        """Read-only sessions on *database*, a member or the primary."""
        return self._read_only[id(database.engine)]

    async def route(self) -> ReplicaRoute:
        """Where the next session goes, honouring the request's consistency token."""
        record = current_consistency()
        mark = None if record is None else record.required.get(self.primary.name)
        if isinstance(mark, float):
            if time.time() - mark < self.settings.consistency_window:
                return self._on_primary()
            mark = None
        replica_set = self.replica_set
        if replica_set is not None and not replica_set.running and not self.closed:
            replica_set.start()  # used outside a lifespan: probe from the first read on
        if replica_set is None:
            replica = self.members[0]
            return ReplicaRoute(replica, self.read_only(replica))
        member = replica_set.choose(mark)
        if member is None and mark is not None and self.settings.consistency_wait > 0:
            member = await replica_set.wait_for(mark, self.settings.consistency_wait)
        if member is not None:
            database = member.database
            return ReplicaRoute(database, self.read_only(database), member, replica_set)
        behind = mark is not None and any(m.in_rotation for m in replica_set.members)
        if behind or self.settings.fallback == "primary":
            # Replicas still behind the client's own write are no outage: the primary has
            # it. With none in rotation at all, `fallback` decides.
            return self._on_primary()
        raise DatabaseUnavailableError(self.name, "no replica is in rotation")

    async def lend_route(self) -> Route:
        """`route` in the form `LentSession` takes."""
        route = await self.route()
        return route.database, route.sessionmaker, route.report_outage

    def _on_primary(self) -> ReplicaRoute:
        return ReplicaRoute(self.primary, self.read_only(self.primary))

    def status(self) -> tuple[ReplicaStatus, ...]:
        """The rotation, lag and replay position of every member (PostgreSQL only)."""
        return () if self.replica_set is None else self.replica_set.snapshot()


class Replication:
    """Every replica group of a router."""

    def __init__(self, registry: DatabaseRegistry, budget: ConnectionBudget | None = None) -> None:
        self.groups: dict[str, ReplicaGroup] = {}
        for name in registry:
            database = registry[name]
            primary_name = database.settings.replica_of
            if primary_name is not None:
                self.groups[name] = ReplicaGroup(database, registry[primary_name], budget)
        self.primaries = frozenset(group.primary.name for group in self.groups.values())

    def start(self) -> None:
        """Start the background probes."""
        for group in self.groups.values():
            if group.replica_set is not None and not group.replica_set.running:
                group.replica_set.start()

    async def probe_idle(self) -> None:
        """Run one probe round for every replica set whose background probe is not running."""
        await asyncio.gather(
            *(
                group.replica_set.probe()
                for group in self.groups.values()
                if group.replica_set is not None
                and not group.replica_set.running
                and not group.closed
            )
        )

    async def close(self, timeout: float) -> None:
        """Stop the probes and dispose the engines of the extra hosts."""
        for group in self.groups.values():
            group.closed = True
            if group.replica_set is not None:
                await group.replica_set.stop()
        await asyncio.gather(
            *(
                drain_and_dispose(database, timeout)
                for group in self.groups.values()
                for database in group.members[1:]
            )
        )
