"""Routing reads to replicas: which server serves a replica session, and the positions
that make read-your-writes hold."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable

from ..databases import Database
from ..engines import EngineFactory
from ..errors import DatabaseUnavailableError
from ..events import ConsistencyRead, EventBus
from ..lending import Route
from ..lifecycle import Lifecycle, State
from ..registry import DatabaseRegistry
from ..urls import is_postgresql
from .consistency import current_consistency
from .readonly import read_only_sessionmaker
from .rotation import ReplicaMember, ReplicaSet, ReplicaStatus

__all__ = ["ReplicaGroup", "Replication"]


class ReplicaGroup:
    """The servers answering under one replica name, and the primary they replicate."""

    def __init__(
        self,
        replica: Database,
        primary: Database,
        factory: EngineFactory,
        lifecycle: Lifecycle,
    ) -> None:
        self.name = replica.name
        self.settings = replica.settings
        self.primary = primary
        self._lifecycle = lifecycle
        self._events: EventBus = factory.events
        self.members: tuple[Database, ...] = (replica, *self._extra_hosts(replica, factory))
        self.replica_set: ReplicaSet | None = None
        # Routes are built once: choosing one costs no allocation per session.
        sessions = {
            id(database.engine): read_only_sessionmaker(database.engine)
            for database in (*self.members, primary)
        }
        self._primary_route: Route = (primary, sessions[id(primary.engine)], None)
        self._first_route: Route = (replica, sessions[id(replica.engine)], None)
        self._member_routes: dict[int, Route] = {}
        if is_postgresql(replica.settings.url):
            weights = [replica.settings.weight, *(host.weight for host in self.settings.hosts)]
            replica_set = ReplicaSet(
                primary,
                [
                    ReplicaMember(db, weight)
                    for db, weight in zip(self.members, weights, strict=True)
                ],
                policy=self.settings.balance,
                events=factory.events,
            )
            self.replica_set = replica_set
            self._member_routes = {
                id(member): (
                    member.database,
                    sessions[id(member.database.engine)],
                    functools.partial(replica_set.report_failure, member),
                )
                for member in replica_set.members
            }

    @staticmethod
    def _extra_hosts(replica: Database, factory: EngineFactory) -> list[Database]:
        return [
            factory.build(
                f"{replica.name}#{number}",
                replica.settings.model_copy(update={"url": host.url, "hosts": []}),
                kind="replica",
            )
            for number, host in enumerate(replica.settings.hosts, start=2)
        ]

    @property
    def closed(self) -> bool:
        """Whether the router is closing or closed."""
        return not self._lifecycle.usable

    def lend_route(self, may_wait: bool = True) -> Route | Awaitable[Route]:
        """Where the next session goes, honouring the request's consistency token: at
        once, without I/O, unless the read may wait for a replica (``consistency_wait``,
        and *may_wait*)."""
        record = current_consistency()
        mark = None if record is None else record.required.get(self.primary.name)
        if isinstance(mark, float):
            if time.time() - mark < self.settings.consistency_window:
                return self._served(self._primary_route, "primary")
            mark = None
        replica_set = self.replica_set
        if replica_set is None:
            return self._first_route
        if self._lifecycle.state is State.NEW:
            self._lifecycle.open()  # used outside a lifespan: probe from the first read on
        member = replica_set.choose(mark)
        if member is None and mark is not None and may_wait and self.settings.consistency_wait:
            return self._wait_route(replica_set, mark)
        return self._decide(replica_set, member, mark)

    async def _wait_route(self, replica_set: ReplicaSet, mark: int) -> Route:
        member = await replica_set.wait_for(mark, self.settings.consistency_wait)
        return self._decide(replica_set, member, mark)

    def _decide(
        self, replica_set: ReplicaSet, member: ReplicaMember | None, mark: int | None
    ) -> Route:
        if member is not None:
            route = self._member_routes[id(member)]
            return route if mark is None else self._served(route, "replica")
        behind = mark is not None and any(m.in_rotation for m in replica_set.members)
        if behind or self.settings.fallback == "primary":
            # Replicas still behind the client's own write are no outage: the primary has
            # it. With none in rotation at all, `fallback` decides.
            return (
                self._primary_route
                if mark is None
                else self._served(self._primary_route, "primary")
            )
        raise DatabaseUnavailableError(self.name, "no replica is in rotation")

    def _served(self, route: Route, where: str) -> Route:
        # Only reads that carry a token get here: the others cost nothing.
        if self._events.wants(ConsistencyRead):
            self._events.emit(
                ConsistencyRead(self.name, "replica" if where == "replica" else "primary")
            )
        return route

    def status(self) -> tuple[ReplicaStatus, ...]:
        """The rotation, lag and replay position of every member (PostgreSQL only)."""
        return () if self.replica_set is None else self.replica_set.snapshot()


class Replication:
    """Every replica group of a router; their probes start when the router opens."""

    def __init__(
        self, registry: DatabaseRegistry, factory: EngineFactory, lifecycle: Lifecycle
    ) -> None:
        self.groups: dict[str, ReplicaGroup] = {}
        self._factory = factory
        for name in registry:
            database = registry[name]
            primary_name = database.settings.replica_of
            if primary_name is not None:
                self.groups[name] = ReplicaGroup(
                    database, registry[primary_name], factory, lifecycle
                )
        self.primaries = frozenset(group.primary.name for group in self.groups.values())
        lifecycle.on_open(self._start)

    def _start(self) -> None:
        for group in self.groups.values():
            if group.replica_set is not None and not group.replica_set.running:
                group.replica_set.start()

    async def measure(self) -> None:
        """Make sure every replica set has been probed: a round now where no background
        probe runs, the first round awaited where one has just started."""
        await asyncio.gather(
            *(
                group.replica_set.measured()
                if group.replica_set.running
                else group.replica_set.probe()
                for group in self.groups.values()
                if group.replica_set is not None and not group.closed
            )
        )

    async def close(self, timeout: float) -> None:
        """Stop the probes and dispose the engines of the extra hosts."""
        for group in self.groups.values():
            if group.replica_set is not None:
                await group.replica_set.stop()
        await asyncio.gather(
            *(
                self._factory.dispose(database, timeout)
                for group in self.groups.values()
                for database in group.members[1:]
            )
        )
