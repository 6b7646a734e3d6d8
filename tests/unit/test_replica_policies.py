"""`ReplicaSet` with readings the test writes: the choice policies, reads that need a WAL
position, leaving and rejoining rotation, the lag estimate and waiting for a replica.

The databases are SQLite ones that never connect: the prober answers every probe itself,
and a clock of the test's tells the time of each round."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dbrouter.databases import Database
from dbrouter.errors import BudgetExhaustedError, DatabaseUnavailableError
from dbrouter.events import Event, EventBus, ReplicaJoinedRotation, ReplicaLeftRotation
from dbrouter.registry import DatabaseRegistry
from dbrouter.replicas import ReplicaMember, ReplicaPolicy, ReplicaSet
from dbrouter.replicas.probes import PostgresProber, ReplicaProber, ReplicaReading
from dbrouter.settings import DatabaseSettings

MAX_LAG = 10.0
INTERVAL = 1.0
NAMES = ("a", "b", "c")


def standby(replay_lsn: int | None, replay_age: float | None = None) -> ReplicaReading:
    return ReplicaReading(in_recovery=True, replay_lsn=replay_lsn, replay_age=replay_age)


class ScriptedProber:
    """Answers each probe with what the test wrote down: the primary's position, and for
    each replica a reading or an error to raise. With *gate* set, replicas answer only
    once it opens."""

    def __init__(self) -> None:
        self.primary: int | Exception = 0
        self.replicas: dict[str, ReplicaReading | Exception] = {}
        self.gate: asyncio.Event | None = None
        self.reads: list[str] = []

    async def read_primary(self, database: Database) -> int:
        self.reads.append(database.name)
        if isinstance(self.primary, Exception):
            raise self.primary
        return self.primary

    async def read_replica(self, database: Database) -> ReplicaReading:
        self.reads.append(database.name)
        if self.gate is not None:
            await self.gate.wait()
        reading = self.replicas[database.name]
        if isinstance(reading, Exception):
            raise reading
        return reading


class Clock:
    """A clock that moves only when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    """A replica set over SQLite databases, with its prober, clock and events."""

    replicas: ReplicaSet
    prober: ScriptedProber
    clock: Clock
    events: list[Event] = field(default_factory=list)

    def __getitem__(self, name: str) -> ReplicaMember:
        (member,) = (m for m in self.replicas.members if m.name == name)
        return member

    async def round(self, at: float, primary: int | Exception, **replicas: Any) -> None:
        """One probe round at *at* seconds after the start, with these readings."""
        self.clock.now = 1000.0 + at
        self.prober.primary = primary
        self.prober.replicas.update(replicas)
        await self.replicas.probe()

    def picks(self, count: int, min_lsn: int | None = None) -> list[str | None]:
        chosen = (self.replicas.choose(min_lsn) for _ in range(count))
        return [None if member is None else member.name for member in chosen]


def replica(**overrides: Any) -> DatabaseSettings:
    options: dict[str, Any] = {
        "url": "sqlite://",
        "replica_of": "primary",
        "max_lag": MAX_LAG,
        "health_check_interval": INTERVAL,
    }
    options.update(overrides)
    return DatabaseSettings(**options)


@pytest.fixture
async def registry() -> AsyncIterator[DatabaseRegistry]:
    registry = DatabaseRegistry(
        {"primary": DatabaseSettings(url="sqlite://"), **{name: replica() for name in NAMES}}
    )
    yield registry
    await registry.dispose()


def rig(
    registry: DatabaseRegistry,
    names: Sequence[str] = NAMES,
    *,
    policy: ReplicaPolicy = "round_robin",
    weights: Sequence[int] | None = None,
) -> Rig:
    prober = ScriptedProber()
    clock = Clock()
    bus = EventBus()
    members = [
        ReplicaMember(registry[name], weight)
        for name, weight in zip(names, weights or [1] * len(names), strict=True)
    ]
    checked: ReplicaProber = prober
    replicas = ReplicaSet(
        registry["primary"], members, policy=policy, clock=clock, events=bus, prober=checked
    )
    result = Rig(replicas, prober, clock)
    bus.subscribe(ReplicaLeftRotation, result.events.append)
    bus.subscribe(ReplicaJoinedRotation, result.events.append)
    return result


@contextmanager
def sessions(setup: Rig, **counts: int) -> Iterator[None]:
    """As many sessions open on each member as given, for the time of the block."""
    for name, count in counts.items():
        for _ in range(count):
            assert setup[name].database.leases.acquire()
    try:
        yield
    finally:
        for name, count in counts.items():
            for _ in range(count):
                setup[name].database.leases.release()


def status(member: ReplicaMember) -> tuple[bool, str | None, float | None, int | None]:
    """What the set holds of *member*: in rotation, why not, its lag in seconds and bytes."""
    return member.in_rotation, member.reason, member.lag_seconds, member.lag_bytes


def all_caught_up(lsn: int) -> dict[str, ReplicaReading]:
    return {name: standby(lsn) for name in NAMES}


# ---- choosing --------------------------------------------------------------------------


async def test_round_robin_cycles_among_the_members_in_rotation(
    registry: DatabaseRegistry,
) -> None:
    setup = rig(registry)
    assert setup.picks(6) == ["a", "b", "c", "a", "b", "c"]
    await setup.round(0, 100, **{**all_caught_up(100), "b": ConnectionRefusedError()})
    assert setup.picks(4) == ["a", "c", "a", "c"]
    await setup.round(1, 100, **all_caught_up(100))
    assert setup.picks(3) == ["a", "b", "c"]


async def test_weighted_interleaves_by_weight(registry: DatabaseRegistry) -> None:
    setup = rig(registry, ("a", "b"), policy="weighted", weights=(3, 1))
    assert setup.picks(8) == ["a", "a", "b", "a", "a", "a", "b", "a"]


async def test_weighted_skips_members_out_of_rotation(registry: DatabaseRegistry) -> None:
    setup = rig(registry, policy="weighted", weights=(1, 2, 1))
    assert setup.picks(4) == ["b", "a", "c", "b"]
    setup.replicas.report_failure(setup["b"])
    picks = setup.picks(6)
    assert "b" not in picks
    assert picks.count("a") == picks.count("c") == 3
    setup.replicas.report_failure(setup["a"])
    setup.replicas.report_failure(setup["c"])
    assert setup.picks(2) == [None, None]


async def test_weighted_with_a_minimum_position(registry: DatabaseRegistry) -> None:
    setup = rig(registry, policy="weighted", weights=(5, 1, 1))
    await setup.round(0, 300, a=standby(100), b=standby(300), c=standby(300))
    assert setup.picks(4, min_lsn=200) == ["b", "c", "b", "c"]
    assert setup.picks(1, min_lsn=301) == [None]


async def test_least_busy_picks_the_member_with_fewest_sessions(
    registry: DatabaseRegistry,
) -> None:
    setup = rig(registry, policy="least_busy")
    with sessions(setup, a=2, b=0, c=1):
        assert setup.picks(3) == ["b", "b", "b"]
        with sessions(setup, b=2):
            assert setup.picks(2) == ["c", "c"]


async def test_least_busy_breaks_ties_in_turn(registry: DatabaseRegistry) -> None:
    setup = rig(registry, policy="least_busy")
    assert setup.picks(4) == ["a", "b", "c", "a"]
    with sessions(setup, a=1):
        assert setup.picks(4) == ["b", "c", "b", "c"]
        setup.replicas.report_failure(setup["b"])
        assert setup.picks(2) == ["c", "c"]


async def test_a_minimum_position_picks_only_members_that_replayed_it(
    registry: DatabaseRegistry,
) -> None:
    setup = rig(registry)
    # Not probed yet: in rotation, with no known position.
    assert setup.picks(1) == ["a"]
    assert setup.picks(1, min_lsn=0) == [None]
    await setup.round(0, 300, a=standby(100), b=standby(200), c=standby(300))
    assert setup.picks(2, min_lsn=300) == ["c", "c"]
    assert setup.picks(4, min_lsn=150) == ["b", "c", "b", "c"]
    assert setup.picks(3, min_lsn=100) == ["a", "b", "c"]
    assert setup.picks(1, min_lsn=301) == [None]


# ---- leaving and rejoining rotation ----------------------------------------------------


async def test_a_lagging_member_leaves_rotation_and_comes_back(registry: DatabaseRegistry) -> None:
    setup = rig(registry, ("a",))
    member = setup["a"]
    await setup.round(0, 1000, a=standby(1000))
    assert status(member) == (True, None, 0.0, 0)
    await setup.round(5, 2000, a=standby(1000))
    assert status(member) == (True, None, 5.0, 1000)
    await setup.round(12, 2000, a=standby(1000))
    assert status(member) == (False, "lagging 12.0 s > max_lag 10.0 s", 12.0, 1000)
    assert setup.picks(1) == [None]
    await setup.round(13, 2000, a=standby(2000))
    assert status(member) == (True, None, 0.0, 0)
    assert setup.events == [
        ReplicaLeftRotation("a", "lagging 12.0 s > max_lag 10.0 s"),
        ReplicaJoinedRotation("a"),
    ]


async def test_a_lag_just_past_max_lag_never_reads_as_equal(registry: DatabaseRegistry) -> None:
    setup = rig(registry, ("a",))
    await setup.round(0, 1000, a=standby(1000))
    await setup.round(10.01, 2000, a=standby(1000))
    assert setup["a"].reason == "lagging 10.1 s > max_lag 10.0 s"
    await setup.round(20, 3000, a=standby(3000))
    await setup.round(30, 4000, a=standby(3000))  # exactly max_lag: still in
    assert setup["a"].lag_seconds == 10.0
    assert setup["a"].in_rotation


async def test_a_server_out_of_recovery_leaves_rotation(registry: DatabaseRegistry) -> None:
    setup = rig(registry, ("a", "b"))
    promoted = ReplicaReading(in_recovery=False, replay_lsn=None, replay_age=None)
    await setup.round(0, 500, a=promoted, b=standby(500))
    assert not setup["a"].in_rotation
    assert setup["a"].reason == "no longer a standby"
    assert setup["a"].replay_lsn is None
    assert setup.picks(3) == ["b", "b", "b"]
    await setup.round(1, 500, a=standby(500))
    assert setup["a"].in_rotation
    assert setup.events == [
        ReplicaLeftRotation("a", "no longer a standby"),
        ReplicaJoinedRotation("a"),
    ]


@pytest.mark.parametrize(
    "error",
    [
        OSError("no route to host"),
        ConnectionRefusedError(),
        ConnectionResetError(),
        TimeoutError(),
        DatabaseUnavailableError("a", "connection refused"),
    ],
    ids=lambda error: type(error).__name__,
)
async def test_an_unreachable_member_leaves_rotation(
    registry: DatabaseRegistry, error: Exception
) -> None:
    setup = rig(registry, ("a", "b"))
    if isinstance(error, DatabaseUnavailableError):
        error.__cause__ = ConnectionRefusedError()
    await setup.round(0, 500, a=error, b=standby(500))
    member = setup["a"]
    assert not member.in_rotation
    assert member.reason == "unreachable"
    assert member.last_probe == 1000.0
    assert setup.picks(2) == ["b", "b"]
    await setup.round(1, 500, a=standby(500))
    assert member.in_rotation
    assert member.reason is None
    assert setup.events == [ReplicaLeftRotation("a", "unreachable"), ReplicaJoinedRotation("a")]


async def test_a_probe_that_never_answers_is_unreachable() -> None:
    registry = DatabaseRegistry(
        {"primary": DatabaseSettings(url="sqlite://"), "a": replica(connect_timeout=0.05)}
    )
    try:
        setup = rig(registry, ("a",))
        setup.prober.gate = asyncio.Event()  # never opened
        started = time.monotonic()
        await asyncio.wait_for(setup.round(0, 500, a=standby(500)), 5)
        assert time.monotonic() - started < 1
        assert setup["a"].reason == "unreachable"
    finally:
        await registry.dispose()


async def test_any_other_failure_is_the_reason(registry: DatabaseRegistry) -> None:
    setup = rig(registry, ("a",))
    await setup.round(0, 500, a=RuntimeError("a bug"))
    assert setup["a"].reason == "other error: RuntimeError"
    await setup.round(1, 500, a=ConnectionRefusedError())
    assert setup["a"].reason == "unreachable"
    assert setup.events == [ReplicaLeftRotation("a", "other error: RuntimeError")]


async def test_rotation_changes_are_reported_once_each(registry: DatabaseRegistry) -> None:
    setup = rig(registry, ("a",))
    for at in range(3):
        await setup.round(at, 500, a=ConnectionRefusedError())
    promoted = ReplicaReading(in_recovery=False, replay_lsn=500, replay_age=None)
    await setup.round(3, 500, a=promoted)
    assert setup["a"].reason == "no longer a standby"
    for at in range(4, 7):
        await setup.round(at, 500, a=standby(500))
    setup.replicas.report_failure(setup["a"])
    setup.replicas.report_failure(setup["a"])
    await setup.round(7, 500, a=standby(500))
    assert setup.events == [
        ReplicaLeftRotation("a", "unreachable"),
        ReplicaJoinedRotation("a"),
        ReplicaLeftRotation("a", "unreachable"),
        ReplicaJoinedRotation("a"),
    ]


async def test_a_reported_failure_holds_until_a_round_started_after_it(
    registry: DatabaseRegistry,
) -> None:
    setup = rig(registry, ("a", "b"))
    member = setup["a"]
    await setup.round(0, 500, **all_caught_up(500))
    setup.prober.gate = asyncio.Event()
    under_way = asyncio.create_task(setup.round(1, 500))
    for _ in range(5):
        await asyncio.sleep(0)
    assert "a" in setup.prober.reads[-3:]  # the round has read the servers already
    setup.replicas.report_failure(member)
    assert not member.in_rotation
    assert member.reason == "unreachable"
    assert setup.picks(2) == ["b", "b"]
    setup.prober.gate.set()
    await asyncio.wait_for(under_way, 5)
    assert not member.in_rotation  # that round began before the failure
    setup.prober.gate = None
    await setup.round(2, 500)
    assert member.in_rotation
    assert setup.events == [ReplicaLeftRotation("a", "unreachable"), ReplicaJoinedRotation("a")]


async def test_only_members_can_be_reported(registry: DatabaseRegistry) -> None:
    setup = rig(registry, ("a",))
    stranger = ReplicaMember(registry["a"])
    with pytest.raises(ValueError, match="not a member"):
        setup.replicas.report_failure(stranger)
    assert setup["a"].in_rotation


async def test_the_snapshot_shows_what_the_last_round_saw(registry: DatabaseRegistry) -> None:
    setup = rig(registry, ("a", "b"))
    assert [status.replay_lsn for status in setup.replicas.snapshot()] == [None, None]
    position = (0x16 << 32) | 0xB374D848
    await setup.round(0, position, a=standby(position), b=ConnectionRefusedError())
    first, second = setup.replicas.snapshot()
    assert (first.name, first.in_rotation, first.reason) == ("a", True, None)
    assert (first.lag_seconds, first.lag_bytes, first.replay_lsn) == (0.0, 0, "16/B374D848")
    assert (second.name, second.in_rotation, second.reason) == ("b", False, "unreachable")
    assert (second.lag_seconds, second.lag_bytes, second.replay_lsn) == (None, None, None)


# ---- no verdict ------------------------------------------------------------------------


async def test_an_exhausted_connection_budget_says_nothing_about_the_server(
    registry: DatabaseRegistry,
) -> None:
    setup = rig(registry, ("a", "b"))
    await setup.round(0, 1000, a=standby(1000), b=ConnectionRefusedError())
    before = [
        (m.in_rotation, m.reason, m.lag_seconds, m.lag_bytes, m.replay_lsn, m.last_probe)
        for m in setup.replicas.members
    ]
    exhausted = BudgetExhaustedError("a", "all 4 connections of max_connections are in use")
    wrapped = DatabaseUnavailableError("b", "max_connections reached")
    wrapped.__cause__ = BudgetExhaustedError("b", "all 4 connections are in use")
    await setup.round(30, 2000, a=exhausted, b=wrapped)
    after = [
        (m.in_rotation, m.reason, m.lag_seconds, m.lag_bytes, m.replay_lsn, m.last_probe)
        for m in setup.replicas.members
    ]
    assert after == before
    assert setup.events == [ReplicaLeftRotation("b", "unreachable")]


async def test_a_pool_with_no_connection_to_spare_is_left_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'replica.db'}"
    registry = DatabaseRegistry(
        {
            "primary": DatabaseSettings(url="sqlite://"),
            "a": replica(url=url, pool_size=1, max_overflow=0),
        }
    )
    try:
        setup = rig(registry, ("a",))
        await setup.round(0, 1000, a=standby(1000))
        async with registry["a"].engine.connect():
            setup.prober.reads.clear()
            await setup.round(20, 2000, a=ConnectionRefusedError())
            assert setup.prober.reads == ["primary"]  # the busy replica was not asked
            assert setup["a"].in_rotation
            assert setup["a"].last_probe == 1000.0
        await setup.round(21, 2000, a=ConnectionRefusedError())
        assert not setup["a"].in_rotation
    finally:
        await registry.dispose()


# ---- the lag estimate ------------------------------------------------------------------


async def test_a_replica_at_this_rounds_primary_position_has_no_lag(
    registry: DatabaseRegistry,
) -> None:
    setup = rig(registry, ("a",))
    # An idle primary: the last transaction replayed is old, but nothing newer is missing.
    await setup.round(0, 1000, a=standby(1000, replay_age=500.0))
    await setup.round(50, 1000, a=standby(1000, replay_age=550.0))
    assert setup["a"].lag_seconds == 0.0
    assert setup["a"].in_rotation


async def test_lag_is_the_time_since_the_primary_was_last_seen_where_the_replica_is(
    registry: DatabaseRegistry,
) -> None:
    setup = rig(registry, ("a",))
    await setup.round(0, 1000, a=standby(900))
    await setup.round(2, 1000, a=standby(1000))
    await setup.round(3, 1500, a=standby(1000))
    await setup.round(4, 1800, a=standby(1200))
    # The primary was last seen at a position the replica has (1000) at 2, and first seen
    # beyond it (1500) at 3: between 1 s and 2 s of lag; the upper bound is reported.
    member = setup["a"]
    assert member.lag_seconds == 2.0
    assert member.lag_bytes == 600
    await setup.round(6, 1800, a=standby(1500))
    # Last seen at or below 1500 at 3; beyond 1500 since 4.
    assert member.lag_seconds == 3.0
    assert member.lag_bytes == 300


async def test_the_age_of_the_last_replayed_transaction_caps_the_upper_bound(
    registry: DatabaseRegistry,
) -> None:
    setup = rig(registry, ("a",))
    await setup.round(0, 1000, a=standby(1000))
    await setup.round(5, 2000, a=standby(1000))
    await setup.round(12, 2000, a=standby(1000, replay_age=3.0))
    # Upper bounds: 12 s since the primary was at 1000, 3 s since the last replayed commit;
    # lower bound: the primary has been past 1000 for 7 s. The lower bound wins.
    assert setup["a"].lag_seconds == 7.0
    assert setup["a"].in_rotation
    await setup.round(14, 2000, a=standby(1000, replay_age=12.0))
    assert setup["a"].lag_seconds == 12.0
    assert setup["a"].reason == "lagging 12.0 s > max_lag 10.0 s"


async def test_with_no_position_in_the_history_the_lower_bound_is_the_lag(
    registry: DatabaseRegistry,
) -> None:
    setup = rig(registry, ("a",))
    await setup.round(0, 1000, a=standby(500))
    assert setup["a"].lag_seconds == 0.0  # first seen beyond the replica just now
    await setup.round(4, 1000, a=standby(500))
    assert setup["a"].lag_seconds == 4.0
    await setup.round(11, 1000, a=standby(500))
    assert setup["a"].reason == "lagging 11.0 s > max_lag 10.0 s"


async def test_positions_older_than_the_horizon_are_forgotten(
    registry: DatabaseRegistry,
) -> None:
    setup = rig(registry, ("a",))
    # The horizon is 2 * max_lag + interval = 21 s.
    await setup.round(0, 1000, a=standby(1000))
    await setup.round(1, 2000, a=standby(1000))
    await setup.round(22, 2000, a=standby(1000))
    # The primary was last seen at 1000 more than 21 s ago: forgotten. What is left says
    # the primary has been beyond the replica for 21 s, still well past max_lag.
    assert setup["a"].lag_seconds == 21.0
    assert setup["a"].reason == "lagging 21.0 s > max_lag 10.0 s"


async def test_an_unknown_replay_position_reports_the_replay_age(
    registry: DatabaseRegistry,
) -> None:
    setup = rig(registry, ("a",))
    await setup.round(0, 1000, a=standby(None, replay_age=4.5))
    assert (setup["a"].lag_seconds, setup["a"].lag_bytes) == (4.5, None)
    assert setup["a"].in_rotation
    await setup.round(1, 1000, a=standby(None, replay_age=None))
    assert (setup["a"].lag_seconds, setup["a"].lag_bytes) == (None, None)
    assert setup["a"].in_rotation


async def test_an_unreachable_primary_keeps_the_lag_as_last_measured(
    registry: DatabaseRegistry,
) -> None:
    setup = rig(registry, ("a", "b"))
    await setup.round(0, 1000, a=standby(1000), b=standby(1000))
    await setup.round(6, 2000, a=standby(1000), b=standby(1500))
    assert (setup["a"].lag_seconds, setup["b"].lag_seconds) == (6.0, 6.0)
    # The primary is gone; a replays what it was last seen at, b does not.
    await setup.round(60, ConnectionRefusedError(), a=standby(2000), b=standby(1800))
    assert setup.replicas.primary_lsn == 2000
    assert (setup["a"].lag_seconds, setup["a"].lag_bytes) == (0.0, 0)
    assert (setup["b"].lag_seconds, setup["b"].lag_bytes) == (6.0, 500)
    assert setup["b"].replay_lsn == 1800
    assert setup["a"].in_rotation
    assert setup["b"].in_rotation
    assert setup["b"].last_probe == 1060.0


async def test_a_primary_that_went_back_in_time_starts_the_history_afresh(
    registry: DatabaseRegistry,
) -> None:
    setup = rig(registry, ("a",))
    await setup.round(0, 5000, a=standby(5000))
    await setup.round(1, 6000, a=standby(5000))
    # Restored from a backup: older positions than before.
    await setup.round(20, 100, a=standby(50))
    assert setup.replicas.primary_lsn == 100
    assert setup["a"].lag_seconds == 0.0  # nothing known from before the restore
    assert setup["a"].lag_bytes == 50


# ---- waiting for a position ------------------------------------------------------------


async def test_wait_for_returns_a_member_once_a_round_shows_it_caught_up(
    registry: DatabaseRegistry,
) -> None:
    setup = rig(registry, ("a", "b"))
    setup.prober.primary = 300
    setup.prober.replicas.update(a=standby(100), b=standby(150))
    async with setup.replicas:
        await setup.replicas.measured()
        waiting = asyncio.create_task(setup.replicas.wait_for(300, 5))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        setup.prober.replicas["b"] = standby(300)
        started = time.monotonic()
        member = await asyncio.wait_for(waiting, 5)
        assert member is setup["b"]
        # Rounds run early while someone waits: well before the 1 s interval.
        assert time.monotonic() - started < 0.5
        # Already there: no wait.
        assert await setup.replicas.wait_for(300, 0) is setup["b"]


async def test_wait_for_gives_none_after_its_timeout(registry: DatabaseRegistry) -> None:
    setup = rig(registry, ("a",))
    setup.prober.primary = 300
    setup.prober.replicas.update(a=standby(100))
    async with setup.replicas:
        started = time.monotonic()
        assert await setup.replicas.wait_for(200, 0.2) is None
        assert 0.2 <= time.monotonic() - started < 1
        assert setup.replicas.running


async def test_wait_for_needs_the_probe_running(registry: DatabaseRegistry) -> None:
    setup = rig(registry, ("a",))
    await setup.round(0, 300, a=standby(300))
    assert await setup.replicas.wait_for(300, 1) is setup["a"]  # answered without waiting
    with pytest.raises(RuntimeError, match="start"):
        await setup.replicas.wait_for(301, 1)


async def test_a_wait_ends_with_none_when_the_set_stops(registry: DatabaseRegistry) -> None:
    setup = rig(registry, ("a",))
    setup.prober.primary = 300
    setup.prober.replicas.update(a=standby(100))
    setup.replicas.start()
    waiting = asyncio.create_task(setup.replicas.wait_for(200, 30))
    await asyncio.sleep(0.1)
    await setup.replicas.stop()
    assert await asyncio.wait_for(waiting, 1) is None


async def test_measured_probes_once_when_no_probe_runs(registry: DatabaseRegistry) -> None:
    setup = rig(registry, ("a",))
    setup.prober.primary = 300
    setup.prober.replicas.update(a=standby(300))
    await setup.replicas.measured()
    assert sorted(setup.prober.reads) == ["a", "primary"]
    assert setup["a"].replay_lsn == 300
    await setup.replicas.measured()  # measured already: no second round
    assert sorted(setup.prober.reads) == ["a", "primary"]


async def test_measured_waits_for_the_first_round_of_a_running_probe(
    registry: DatabaseRegistry,
) -> None:
    setup = rig(registry, ("a",))
    setup.prober.primary = 300
    setup.prober.replicas.update(a=standby(300))
    setup.prober.gate = asyncio.Event()
    async with setup.replicas:
        measuring = asyncio.create_task(setup.replicas.measured())
        await asyncio.sleep(0.05)
        assert not measuring.done()
        assert setup["a"].replay_lsn is None
        setup.prober.gate.set()
        await asyncio.wait_for(measuring, 5)
        assert setup["a"].replay_lsn == 300
        assert sorted(setup.prober.reads) == ["a", "primary"]


# ---- the default prober ----------------------------------------------------------------


def test_the_default_prober_runs_the_postgresql_queries() -> None:
    from dbrouter.replicas import probes

    default: ReplicaProber = PostgresProber()
    assert default.read_primary == probes.read_primary
    assert default.read_replica == probes.read_replica
