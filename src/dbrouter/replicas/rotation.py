"""Read replicas: which replicas of a primary are fit to serve reads, and which one serves next.

A `ReplicaSet` probes its replicas in the background. A replica leaves rotation when it
cannot be reached, is no longer in recovery, or lags more than its ``max_lag``; it comes
back when a later probe finds it healthy. `ReplicaSet.choose` picks a replica for one read
from the last probe results, without any I/O.

Positions in the write-ahead log (LSNs) are plain ints here (see `dbrouter.lsn`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal

from ..events import EventBus, ReplicaJoinedRotation, ReplicaLeftRotation
from ..logs import log_events
from ..outages import FailureReason, budget_exhausted, classify
from .lsn import format_lsn, parse_lsn
from .probes import PostgresProber, ReplicaProber, ReplicaReading, probe

if TYPE_CHECKING:
    # Only for annotations: the database module's own imports may lead back here.
    from ..databases import Database

__all__ = [
    "ReplicaMember",
    "ReplicaPolicy",
    "ReplicaSet",
    "ReplicaStatus",
    "format_lsn",
    "parse_lsn",
]

logger = logging.getLogger("dbrouter")

ReplicaPolicy = Literal["round_robin", "least_busy", "weighted"]
"""How `ReplicaSet.choose` spreads reads over the replicas in rotation."""

_POLICIES: Final = ("round_robin", "least_busy", "weighted")
# While a wait_for caller is waiting, rounds run back to back but never closer than this.
_EARLY_ROUND_GAP: Final = 0.05
# Primary positions remembered for measuring lag; the horizon keeps the list short anyway.
_HISTORY_LIMIT: Final = 1024


@dataclass(eq=False, slots=True)
class ReplicaMember:
    """One replica in a `ReplicaSet`: its database, its weight, and what the probe saw.

    The state fields are maintained by the `ReplicaSet`; read them, do not assign them.
    A new member is in rotation (the probe has not had its say yet) with its replay
    position unknown, so it serves no read that needs a minimum LSN until probed.
    """

    database: Database
    """The replica's database (engine, sessionmaker, leases)."""
    weight: int = 1
    """Its share of reads under the ``weighted`` policy (a positive int)."""
    in_rotation: bool = field(default=True, init=False)
    """Whether `ReplicaSet.choose` may pick it."""
    reason: str | None = field(default=None, init=False)
    """Why it is out of rotation: ``unreachable``, ``no longer a standby``, ``lagging ...``."""
    lag_seconds: float | None = field(default=None, init=False)
    """How old, at most, the newest write it has not replayed is (None: never measured).

    Kept as last measured while the primary cannot be reached.
    """
    lag_bytes: int | None = field(default=None, init=False)
    """WAL bytes between the primary's position and its replay position."""
    replay_lsn: int | None = field(default=None, init=False)
    """The WAL position it had replayed at the last probe (None: not probed yet)."""
    last_probe: float | None = field(default=None, init=False)
    """When the last probe that reached a verdict started, on the set's clock."""
    _current: int = field(default=0, init=False, repr=False)
    _failures: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) or self.weight < 1:
            raise ValueError(f"weight must be a positive int, not {self.weight!r}")

    @property
    def name(self) -> str:
        """The name of the replica's database."""
        return self.database.name


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """A replica's state at one moment, for health output."""

    name: str
    in_rotation: bool
    reason: str | None
    """Why it is out of rotation; None while in rotation."""
    lag_seconds: float | None
    lag_bytes: int | None
    replay_lsn: str | None
    """The replayed position in ``X/Y`` form."""


class ReplicaSet:
    """The replicas of one primary: their health, kept by a background probe, and the choice
    of a replica for each read.

    Every round (each ``health_check_interval``; the smallest among the members) asks the
    primary for its WAL position and every replica, in parallel and each within its
    ``connect_timeout``, whether it is in recovery and how far it has replayed. `start`
    begins the rounds, `stop` ends them; the set is also an async context manager. Stop the
    set before disposing the engines of its databases.

    *prober* does the reading (default: `PostgresProber`, the queries above); *clock*
    tells the time of each round, from which lag is measured.
    """

    def __init__(
        self,
        primary: Database,
        members: Sequence[ReplicaMember],
        *,
        policy: ReplicaPolicy = "round_robin",
        clock: Callable[[], float] = time.monotonic,
        events: EventBus | None = None,
        prober: ReplicaProber | None = None,
    ) -> None:
        if policy not in _POLICIES:
            raise ValueError(f"unknown replica policy {policy!r}; choose one of {_POLICIES}")
        if not members:
            raise ValueError("a ReplicaSet needs at least one member")
        names = [member.name for member in members]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"replica names must be unique; repeated: {duplicates}")
        strangers = sorted(
            member.name
            for member in members
            if member.database.settings.replica_of != primary.name
        )
        if strangers:
            raise ValueError(f"{strangers} do not replicate {primary.name!r} (see replica_of)")
        if events is None:
            events = EventBus()
            log_events(events)
        self._events = events
        self._primary = primary
        self._members = tuple(members)
        self._policy: ReplicaPolicy = policy
        self._clock = clock
        self._prober: ReplicaProber = PostgresProber() if prober is None else prober
        self._interval = min(m.database.settings.health_check_interval for m in self._members)
        max_lag = max(m.database.settings.max_lag for m in self._members)
        self._horizon = 2 * max_lag + self._interval
        # (lsn, first seen, last seen) of the primary's position, oldest first.
        self._history: deque[tuple[int, float, float]] = deque(maxlen=_HISTORY_LIMIT)
        self._primary_lsn: int | None = None
        self._next = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._round_done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._rounds = 0

    # ---- configuration and state -----------------------------------------------------

    @property
    def primary(self) -> Database:
        """The database the members replicate."""
        return self._primary

    @property
    def members(self) -> tuple[ReplicaMember, ...]:
        """The replicas, in the order given."""
        return self._members

    @property
    def policy(self) -> ReplicaPolicy:
        """How `choose` spreads reads."""
        return self._policy

    @property
    def interval(self) -> float:
        """Seconds between probe rounds."""
        return self._interval

    @property
    def primary_lsn(self) -> int | None:
        """The primary's WAL write position at the last round that reached it."""
        return self._primary_lsn

    @property
    def running(self) -> bool:
        """Whether the background probe is running."""
        return self._task is not None and not self._stopped

    def snapshot(self) -> tuple[ReplicaStatus, ...]:
        """The state of every member now, in member order."""
        return tuple(
            ReplicaStatus(
                name=member.name,
                in_rotation=member.in_rotation,
                reason=member.reason,
                lag_seconds=member.lag_seconds,
                lag_bytes=member.lag_bytes,
                replay_lsn=None if member.replay_lsn is None else format_lsn(member.replay_lsn),
            )
            for member in self._members
        )

    # ---- choosing --------------------------------------------------------------------

    def choose(self, min_lsn: int | None = None) -> ReplicaMember | None:
        """A member in rotation for one read, by the set's policy; None when none qualifies.

        With *min_lsn*, only a member whose last probed replay position is at least
        *min_lsn* qualifies (an unknown position does not). No I/O; O(members).

        ``least_busy`` counts the sessions open on each member (its database's leases:
        sessions using a connection or waiting for one); ties go round-robin.
        """
        if self._policy == "weighted":
            return self._choose_weighted(min_lsn)
        members = self._members
        count = len(members)
        least_busy = self._policy == "least_busy"
        best: ReplicaMember | None = None
        best_index = 0
        best_load = 0
        index = self._next
        for _ in range(count):
            if index >= count:
                index = 0
            member = members[index]
            if _qualifies(member, min_lsn):
                if not least_busy:
                    self._next = index + 1
                    return member
                load = member.database.leases.count
                if best is None or load < best_load:
                    best, best_index, best_load = member, index, load
            index += 1
        if best is not None:
            self._next = best_index + 1
        return best

    def _choose_weighted(self, min_lsn: int | None) -> ReplicaMember | None:
        # Smooth weighted round-robin (nginx): every qualifying member gains its weight,
        # the richest is picked and pays the total. Picks interleave: 3:1 is a a b a.
        total = 0
        best: ReplicaMember | None = None
        for member in self._members:
            if not _qualifies(member, min_lsn):
                continue
            member._current += member.weight
            total += member.weight
            if best is None or member._current > best._current:
                best = member
        if best is not None:
            best._current -= total
        return best

    async def wait_for(self, min_lsn: int, timeout: float) -> ReplicaMember | None:
        """A member that has replayed *min_lsn*, waiting up to *timeout* seconds for one.

        Decides on probe results only; while it waits, probe rounds run early (at most one
        per 50 ms). None when no member qualifies in time. The set must be running.
        """
        member = self.choose(min_lsn)
        if member is not None:
            return member
        if not self.running:
            raise RuntimeError("the ReplicaSet is not running; call start() first")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.running:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            round_done = self._round_done
            self._wake.set()
            try:
                await asyncio.wait_for(round_done.wait(), remaining)
            except asyncio.TimeoutError:
                return None
            member = self.choose(min_lsn)
            if member is not None:
                return member
        return None

    async def measured(self) -> None:
        """Make sure at least one probe round has finished: run one now when the
        background probe is not running, wait for the first one when it is."""
        if self._rounds:
            return
        if not self.running:
            await self.probe()
            return
        await self._round_done.wait()

    def report_failure(self, member: ReplicaMember) -> None:
        """Take *member* out of rotation now: a request on it found it unreachable.

        It stays out until a probe round that starts after this call finds it healthy, so
        no other request pays for trying it meanwhile.
        """
        if not any(member is known for known in self._members):
            raise ValueError(f"{member.name!r} is not a member of this ReplicaSet")
        member._failures += 1
        self._put_out(member, "unreachable")

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the background probe (needs a running event loop); again: no effect."""
        if self._stopped:
            raise RuntimeError("the ReplicaSet was stopped and cannot be started again")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"dbrouter replica probe of {self._primary.name!r}"
            )

    async def stop(self) -> None:
        """Stop the background probe and wait until it has; again: no effect."""
        if self._stopped:
            return
        self._stopped = True
        task, self._task = self._task, None
        self._round_done.set()
        if task is not None:
            task.cancel()
            # wait() leaves the task's own cancellation in the task; a cancellation of
            # stop() itself still propagates.
            await asyncio.wait((task,))

    async def __aenter__(self) -> ReplicaSet:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            self._wake.clear()
            try:
                await self.probe()
            except Exception:
                logger.exception("dbrouter: replica probe round failed")
            delay = self._interval - (loop.time() - started)
            if delay > 0 and not self._wake.is_set():
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except asyncio.TimeoutError:
                    continue
            await asyncio.sleep(max(0.0, started + _EARLY_ROUND_GAP - loop.time()))

    # ---- probing ---------------------------------------------------------------------

    async def probe(self) -> None:
        """Run one probe round now and apply its results (rounds never overlap).

        The background probe calls this; call it yourself to measure before `start`, for
        example before serving the first request. Refused once the set is stopped.
        """
        if self._stopped:
            raise RuntimeError("the ReplicaSet was stopped; its engines may be disposed")
        async with self._lock:
            # A failure reported after this point is newer than anything this round sees.
            failures = [member._failures for member in self._members]
            now = self._clock()
            primary, readings = await asyncio.gather(
                probe(self._primary, self._prober.read_primary),
                asyncio.gather(
                    *(probe(m.database, self._prober.read_replica) for m in self._members)
                ),
            )
            primary_lsn = primary if isinstance(primary, int) else None
            if isinstance(primary, Exception):
                logger.debug(
                    "dbrouter: primary %r not probed", self._primary.name, exc_info=primary
                )
            if primary_lsn is not None:
                self._remember_primary(primary_lsn, now)
            for member, reading, seen_failures in zip(
                self._members, readings, failures, strict=True
            ):
                self._apply(member, reading, now, primary_lsn, seen_failures)
        self._rounds += 1
        round_done, self._round_done = self._round_done, asyncio.Event()
        round_done.set()

    def _remember_primary(self, lsn: int, now: float) -> None:
        history = self._history
        if history and lsn < history[-1][0]:
            # The primary went back in time (restored or replaced): old positions mean nothing.
            history.clear()
        if history and history[-1][0] == lsn:
            history[-1] = (lsn, history[-1][1], now)
        else:
            history.append((lsn, now, now))
        while len(history) > 1 and history[0][2] < now - self._horizon:
            history.popleft()
        self._primary_lsn = lsn

    def _apply(
        self,
        member: ReplicaMember,
        reading: ReplicaReading | Exception | None,
        now: float,
        primary_lsn: int | None,
        seen_failures: int,
    ) -> None:
        if reading is None or (isinstance(reading, Exception) and budget_exhausted(reading)):
            return  # no connection to spare on this side: that says nothing about the server
        member.last_probe = now
        if isinstance(reading, Exception):
            failure = classify(reading)
            reason = _rotation_reason(failure)
            if member.in_rotation or member.reason != reason:
                # The reason goes into the one WARNING line of _put_out; the traceback, for
                # whoever debugs the probe, only here and once per reason.
                logger.debug(
                    "dbrouter: probing replica %r failed: %s",
                    member.name,
                    failure,
                    exc_info=reading,
                )
            self._put_out(member, reason)
            return
        member.replay_lsn = reading.replay_lsn
        if not reading.in_recovery:
            self._put_out(member, "no longer a standby")
            return
        if primary_lsn is not None:
            self._measure_lag(member, reading, now, primary_lsn)
        elif (
            reading.replay_lsn is not None
            and self._primary_lsn is not None
            and reading.replay_lsn >= self._primary_lsn
        ):
            # Caught up with the last position the primary was seen at.
            member.lag_seconds, member.lag_bytes = 0.0, 0
        max_lag = member.database.settings.max_lag
        lag = member.lag_seconds
        if lag is not None and lag > max_lag:
            # Rounded up, so that the reason never reads "lagging 30.0 s > max_lag 30.0 s".
            shown = math.ceil(lag * 10) / 10
            self._put_out(member, f"lagging {shown:.1f} s > max_lag {max_lag:.1f} s")
        elif member._failures == seen_failures:
            self._put_in(member)

    def _measure_lag(
        self, member: ReplicaMember, reading: ReplicaReading, now: float, primary_lsn: int
    ) -> None:
        replay = reading.replay_lsn
        if replay is None:
            member.lag_seconds, member.lag_bytes = reading.replay_age, None
            return
        member.lag_bytes = max(0, primary_lsn - replay)
        # The lag is how old the oldest write the replica misses is. Two upper bounds:
        # the age of the last transaction it replayed (too high while the primary is idle:
        # then nothing newer is missing), and the time since the primary was last seen at a
        # position the replica has reached (0 when it has reached this round's position).
        # A lower bound: the time since the primary was first seen beyond the replica.
        upper = reading.replay_age
        lower: float | None = None
        for lsn, first_seen, last_seen in reversed(self._history):
            if lsn <= replay:
                upper = now - last_seen if upper is None else min(upper, now - last_seen)
                break
            lower = now - first_seen
        if upper is None:
            member.lag_seconds = lower
        else:
            member.lag_seconds = max(0.0, upper, lower or 0.0)

    def _put_out(self, member: ReplicaMember, reason: str) -> None:
        if member.in_rotation:
            self._events.emit(ReplicaLeftRotation(member.name, reason))
        member.in_rotation = False
        member.reason = reason

    def _put_in(self, member: ReplicaMember) -> None:
        if not member.in_rotation:
            self._events.emit(ReplicaJoinedRotation(member.name))
        member.in_rotation = True
        member.reason = None


def _qualifies(member: ReplicaMember, min_lsn: int | None) -> bool:
    if not member.in_rotation:
        return False
    if min_lsn is None:
        return True
    replay = member.replay_lsn
    return replay is not None and replay >= min_lsn


def _rotation_reason(failure: FailureReason) -> str:
    # A server that refuses, drops or never answers the connection is "unreachable", in
    # the words of report_failure; any other failure says what it is.
    if failure.kind in ("unreachable", "timeout", "connection lost"):
        return "unreachable"
    return failure.text
