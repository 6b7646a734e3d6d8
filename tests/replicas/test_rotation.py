"""Replica sets against a real primary and a real streaming standby: probing, lag, the
circuit breaker, reads that need a WAL position, and the choice policies. Plus the LSN text
form, which HTTP clients send back."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import re
import socket
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from dbrouter.registry import DatabaseRegistry
from dbrouter.replicas import ReplicaMember, ReplicaSet, format_lsn, parse_lsn
from dbrouter.settings import DatabaseSettings
from tests.support.replication import (
    Replication,
    eventually,
    insert_events,
    primary_and_standby_fixture,
    replica_registry,
    replication_fixture,
)

# Fixtures are found by name in the test module.
__all__ = ["primary_and_standby_fixture", "replication_fixture"]

MAX_LSN = 2**64 - 1


# ---- LSN text form ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text_form", "value"),
    [
        ("0/0", 0),
        ("0/16B3748", 0x16B3748),
        ("16/B374D848", (0x16 << 32) | 0xB374D848),
        ("16/b374d848", (0x16 << 32) | 0xB374D848),
        ("00000016/0000000A", (0x16 << 32) | 0xA),
        ("FFFFFFFF/FFFFFFFF", MAX_LSN),
    ],
)
def test_parse_lsn_reads_high_and_low_halves(text_form: str, value: int) -> None:
    assert parse_lsn(text_form) == value


@pytest.mark.parametrize(
    ("value", "text_form"),
    [
        (0, "0/0"),
        ((0x16 << 32) | 0xB374D848, "16/B374D848"),
        (0xA, "0/A"),
        (MAX_LSN, "FFFFFFFF/FFFFFFFF"),
    ],
)
def test_format_lsn_writes_what_postgresql_writes(value: int, text_form: str) -> None:
    assert format_lsn(value) == text_form


@pytest.mark.parametrize(
    "malformed",
    [
        "",
        "/",
        "16",
        "16/",
        "/B374D848",
        "16/B374D848/0",
        " 16/B374D848",
        "16/B374D848 ",
        "16/B374D848\n",
        "16 /B374D848",
        "16/\tB374D848",
        "+16/B374D848",
        "-16/B374D848",
        "0x16/B374D848",
        "1_6/B374D848",
        "123456789/0",
        "0/123456789",
        "G/0",
        "16\\B374D848",
        "16/B374D848\x00",
        "\u0661\u0666/\u0661",  # Arabic-Indic digits
        "\uff11\uff16/\uff21",  # fullwidth digits and letter
        "0" * 10_000 + "/0",
    ],
)
def test_parse_lsn_rejects_anything_but_the_strict_form(malformed: str) -> None:
    with pytest.raises(ValueError, match="hex digits"):
        parse_lsn(malformed)


def test_parse_lsn_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        parse_lsn(b"16/B374D848")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, MAX_LSN + 1])
def test_format_lsn_rejects_values_outside_64_bits(value: int) -> None:
    with pytest.raises(ValueError, match="between 0 and 2"):
        format_lsn(value)


@given(st.integers(min_value=0, max_value=MAX_LSN))
def test_format_then_parse_is_identity(value: int) -> None:
    assert parse_lsn(format_lsn(value)) == value


@given(st.from_regex(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}", fullmatch=True))
def test_parse_then_format_is_the_canonical_form(text_form: str) -> None:
    high, low = text_form.split("/")
    assert format_lsn(parse_lsn(text_form)) == f"{int(high, 16):X}/{int(low, 16):X}"


@given(st.text(max_size=24))
def test_parse_lsn_accepts_only_two_short_ascii_hex_groups(candidate: str) -> None:
    strict = re.fullmatch(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}", candidate, flags=re.ASCII)
    try:
        parse_lsn(candidate)
    except ValueError:
        assert strict is None
    else:
        assert strict is not None


async def test_lsn_text_form_agrees_with_postgresql(replication: Replication) -> None:
    values = [0, 1, 0xFFFFFFFF, 1 << 32, (0x16 << 32) | 0xB374D848, MAX_LSN]
    query = text(
        "SELECT CAST(CAST(:lsn AS text) AS pg_lsn)::text, "
        "CAST(CAST(:lsn AS text) AS pg_lsn) - '0/0'::pg_lsn"
    )
    async with (
        replica_registry(replication) as registry,
        registry["primary"].engine.connect() as db,
    ):
        for value in values:
            printed, offset = (await db.execute(query, {"lsn": format_lsn(value)})).one()
            assert printed == format_lsn(value)
            assert offset == value
            assert parse_lsn(printed) == value


# ---- construction and lifecycle --------------------------------------------------------


async def test_a_replica_set_refuses_inconsistent_members() -> None:
    url = "postgresql://app@127.0.0.1:1/app"  # never connected to
    registry = DatabaseRegistry(
        {
            "primary": DatabaseSettings(url=url),
            "other": DatabaseSettings(url=url),
            "replica": DatabaseSettings(url=url, replica_of="primary"),
            "stray": DatabaseSettings(url=url, replica_of="other"),
        }
    )
    try:
        primary, replica = registry["primary"], registry["replica"]
        with pytest.raises(ValueError, match="round_robin"):
            ReplicaSet(primary, [ReplicaMember(replica)], policy="random")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="at least one"):
            ReplicaSet(primary, [])
        with pytest.raises(ValueError, match="unique"):
            ReplicaSet(primary, [ReplicaMember(replica), ReplicaMember(replica)])
        with pytest.raises(ValueError, match="stray"):
            ReplicaSet(primary, [ReplicaMember(replica), ReplicaMember(registry["stray"])])
        with pytest.raises(ValueError, match="positive"):
            ReplicaMember(replica, weight=0)
    finally:
        await registry.dispose()


async def test_lifecycle_start_stop_and_no_leftovers(replication: Replication) -> None:
    async with replica_registry(replication) as registry:
        member = ReplicaMember(registry["replica"])
        replicas = ReplicaSet(registry["primary"], [member])
        with pytest.raises(RuntimeError, match="start"):
            await replicas.wait_for(0, 0.1)
        replicas.start()
        replicas.start()
        assert replicas.running
        await replicas.stop()
        await replicas.stop()
        assert not replicas.running
        with pytest.raises(RuntimeError, match="stopped"):
            replicas.start()
        with pytest.raises(RuntimeError, match="stopped"):
            await replicas.probe()
        # Stopped at every stage of a round, connections included.
        for delay in (0.0, 0.001, 0.005, 0.02, 0.1):
            async with ReplicaSet(registry["primary"], [ReplicaMember(registry["replica"])]):
                await asyncio.sleep(delay)
    gc.collect()


# ---- probing ---------------------------------------------------------------------------


async def test_a_caught_up_standby_is_in_rotation_with_no_lag(replication: Replication) -> None:
    async with replica_registry(replication) as registry:
        member = ReplicaMember(registry["replica"])
        replicas = ReplicaSet(registry["primary"], [member])
        # Optimistic until probed, but with no known replay position.
        assert replicas.choose() is member
        assert replicas.choose(min_lsn=0) is None
        assert member.replay_lsn is None
        assert replicas.primary_lsn is None

        await insert_events(registry["primary"].engine, 100)
        await asyncio.to_thread(replication.heal)
        async with replicas:
            await eventually(
                lambda: (
                    member.replay_lsn is not None and member.replay_lsn == replicas.primary_lsn
                ),
                "the probe sees the standby at the primary's position",
            )
            assert member.in_rotation
            assert member.reason is None
            assert member.lag_seconds == 0.0
            assert member.lag_bytes == 0
            assert replicas.choose(min_lsn=member.replay_lsn) is member
            replayed = await asyncio.to_thread(
                replication.standby.query, "SELECT pg_last_wal_replay_lsn()"
            )
            assert parse_lsn(replayed[0][0]) == member.replay_lsn

            # An idle primary commits nothing, so the last replayed commit grows old; that
            # is no lag. Stay idle for longer than max_lag and watch every round.
            max_lag = member.database.settings.max_lag
            deadline = time.monotonic() + 1.5 * max_lag
            while time.monotonic() < deadline:
                assert member.in_rotation, member.reason
                assert member.lag_seconds is not None
                assert member.lag_seconds < max_lag
                await asyncio.sleep(0.05)

        (status,) = replicas.snapshot()
        assert status.name == "replica"
        assert status.in_rotation
        assert status.reason is None
        assert status.lag_bytes == 0
        assert member.replay_lsn is not None
        assert status.replay_lsn == format_lsn(member.replay_lsn)
        with pytest.raises(dataclasses.FrozenInstanceError):
            status.in_rotation = False


async def test_paused_replay_takes_the_standby_out_for_lag(replication: Replication) -> None:
    async with replica_registry(replication) as registry:
        member = ReplicaMember(registry["replica"])
        async with ReplicaSet(registry["primary"], [member]) as replicas:
            await eventually(lambda: member.lag_seconds == 0.0, "the standby is caught up")
            await replication.pause_replay()
            try:
                # A few thousand rows over more than max_lag seconds.
                for _ in range(6):
                    await insert_events(registry["primary"].engine, 500)
                    await asyncio.sleep(0.25)
                await eventually(
                    lambda: not member.in_rotation, "the standby leaves rotation", timeout=5
                )
                assert member.reason is not None
                assert re.fullmatch(r"lagging \d+\.\d s > max_lag 1\.0 s", member.reason)
                assert member.lag_seconds is not None
                assert member.lag_seconds > 1.0
                assert member.lag_bytes is not None
                assert member.lag_bytes > 0
                assert member.replay_lsn is not None
                assert replicas.primary_lsn is not None
                assert member.replay_lsn < replicas.primary_lsn
                assert replicas.choose() is None

                await replication.resume_replay()
                back = await eventually(
                    lambda: member.in_rotation, "the standby is back in rotation", timeout=5
                )
                assert back < 10 * replicas.interval
                assert member.reason is None
                await eventually(lambda: member.lag_seconds == 0.0, "the standby caught up")
                assert replicas.choose() is member
            finally:
                await replication.resume_replay()


@pytest.mark.faults
async def test_a_stopped_standby_is_out_until_it_is_back(replication: Replication) -> None:
    async with replica_registry(replication) as registry:
        member = ReplicaMember(registry["replica"])
        async with ReplicaSet(registry["primary"], [member]) as replicas:
            await eventually(lambda: member.lag_seconds == 0.0, "the standby is caught up")
            try:
                await asyncio.to_thread(replication.standby.stop, "immediate")
                await eventually(
                    lambda: not member.in_rotation, "the standby leaves rotation", timeout=5
                )
                assert member.reason == "unreachable"
                assert replicas.choose() is None
                assert replicas.snapshot()[0].reason == "unreachable"
            finally:
                await asyncio.to_thread(replication.standby.start)
            await eventually(lambda: member.in_rotation, "the standby is back", timeout=15)
            assert member.reason is None
            assert replicas.choose() is member


@pytest.mark.faults
async def test_an_unreachable_primary_freezes_the_lag(replication: Replication) -> None:
    async with replica_registry(replication) as registry:
        member = ReplicaMember(registry["replica"])
        async with ReplicaSet(registry["primary"], [member]) as replicas:
            await eventually(lambda: member.lag_seconds == 0.0, "the standby is caught up")
            known = replicas.primary_lsn
            try:
                await asyncio.to_thread(replication.primary.stop, "fast")
                # The standby's last replayed commit keeps ageing past max_lag, but without
                # the primary nothing says the standby misses anything.
                last_probe = member.last_probe
                deadline = time.monotonic() + 1.5 * member.database.settings.max_lag
                while time.monotonic() < deadline:
                    assert member.in_rotation, member.reason
                    assert member.lag_seconds == 0.0
                    await asyncio.sleep(0.05)
                assert member.last_probe is not None
                assert last_probe is not None
                assert member.last_probe > last_probe
                assert replicas.primary_lsn == known
                assert replicas.choose() is member
            finally:
                await asyncio.to_thread(replication.primary.start)


async def test_a_server_out_of_recovery_is_no_replica(replication: Replication) -> None:
    registry = DatabaseRegistry(
        {
            "primary": DatabaseSettings(url=replication.primary_url),
            "impostor": DatabaseSettings(url=replication.primary_url, replica_of="primary"),
        }
    )
    try:
        member = ReplicaMember(registry["impostor"])
        replicas = ReplicaSet(registry["primary"], [member])
        await replicas.probe()
        assert not member.in_rotation
        assert member.reason == "no longer a standby"
        assert replicas.choose() is None
    finally:
        await registry.dispose()


async def test_a_silent_server_is_unreachable_within_connect_timeout(
    replication: Replication,
) -> None:
    # Accepts TCP connections (the kernel does) and never says a word.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        registry = DatabaseRegistry(
            {
                "primary": DatabaseSettings(url=replication.primary_url),
                "replica": DatabaseSettings(
                    url=f"postgresql://app@127.0.0.1:{port}/app",
                    replica_of="primary",
                    connect_timeout=0.5,
                ),
            }
        )
        try:
            member = ReplicaMember(registry["replica"])
            replicas = ReplicaSet(registry["primary"], [member])
            started = time.monotonic()
            await replicas.probe()
            assert time.monotonic() - started < 1.5
            assert not member.in_rotation
            assert member.reason == "unreachable"
            assert replicas.primary_lsn is not None
            # Stopped while connecting.
            async with ReplicaSet(registry["primary"], [ReplicaMember(registry["replica"])]):
                await asyncio.sleep(0.2)
        finally:
            await registry.dispose()
    gc.collect()


async def test_an_exhausted_pool_is_not_an_outage(replication: Replication) -> None:
    busy = {"pool_size": 1, "max_overflow": 0, "connect_timeout": 0.5, "pool_timeout": 0.5}
    async with replica_registry(replication, {"replica": busy}) as registry:
        member = ReplicaMember(registry["replica"])
        ticks = iter(range(1, 100))
        replicas = ReplicaSet(registry["primary"], [member], clock=lambda: float(next(ticks)))
        await replicas.probe()
        assert member.in_rotation
        assert member.last_probe == 1.0
        async with registry["replica"].engine.connect() as held:
            await held.execute(text("SELECT 1"))
            started = time.monotonic()
            await replicas.probe()
            assert time.monotonic() - started < 0.4
        # Every connection was serving a request: no verdict, no waiting.
        assert member.in_rotation
        assert member.last_probe == 1.0
        await replicas.probe()
        assert member.last_probe == 3.0


# ---- the circuit breaker ---------------------------------------------------------------


async def test_a_reported_failure_holds_until_a_later_probe(replication: Replication) -> None:
    async with replica_registry(replication) as registry:
        member = ReplicaMember(registry["replica"])
        replicas = ReplicaSet(registry["primary"], [member])
        await replicas.probe()
        assert member.in_rotation

        replicas.report_failure(member)
        assert not member.in_rotation
        assert member.reason == "unreachable"
        assert replicas.choose() is None
        await asyncio.sleep(3 * replicas.interval)
        assert replicas.choose() is None

        await replicas.probe()
        assert member.in_rotation

        # A round already under way when the failure came in does not clear it.
        round_under_way = asyncio.create_task(replicas.probe())
        await asyncio.sleep(0)
        replicas.report_failure(member)
        await round_under_way
        assert not member.in_rotation
        assert member.reason == "unreachable"

        await replicas.probe()
        assert member.in_rotation
        assert member.reason is None

        async with replicas:
            replicas.report_failure(member)
            assert replicas.choose() is None
            await eventually(
                lambda: member.in_rotation, "the next round brings it back", timeout=3
            )

        stranger = ReplicaMember(registry["replica"])
        with pytest.raises(ValueError, match="not a member"):
            replicas.report_failure(stranger)


# ---- reads that need a WAL position ----------------------------------------------------


async def test_min_lsn_waits_for_the_write_to_be_replayed(replication: Replication) -> None:
    # A long interval shows that wait_for probes early; a large max_lag keeps the paused
    # standby in rotation for reads that need no position.
    slow = {"health_check_interval": 5.0, "max_lag": 60.0}
    async with replica_registry(replication, {"replica": slow}) as registry:
        member = ReplicaMember(registry["replica"])
        async with ReplicaSet(registry["primary"], [member]) as replicas:
            await eventually(lambda: member.replay_lsn is not None, "the first round")
            await replication.pause_replay()
            try:
                async with registry["primary"].sessionmaker() as session:
                    row_id = await session.scalar(
                        text("INSERT INTO events (payload) VALUES ('mine') RETURNING id")
                    )
                    await session.commit()
                    token = parse_lsn(
                        await session.scalar(text("SELECT pg_current_wal_insert_lsn()::text"))
                    )
                    # A commit ending exactly at a WAL page boundary leaves the insert
                    # position past the next page header, which the standby reaches with
                    # the next record only: write one.
                    await session.execute(text("SELECT pg_logical_emit_message(false, 't', '')"))
                    await session.commit()

                assert await replicas.wait_for(token, 0.3) is None
                assert replicas.choose(min_lsn=token) is None
                assert replicas.choose() is member

                await replication.resume_replay()
                started = time.monotonic()
                chosen = await replicas.wait_for(token, 5.0)
                assert chosen is member
                assert time.monotonic() - started < 0.2 * replicas.interval
                assert member.replay_lsn is not None
                assert member.replay_lsn >= token
            finally:
                await replication.resume_replay()

        async with member.database.sessionmaker() as session:
            found = await session.scalar(
                text("SELECT payload FROM events WHERE id = :id"), {"id": row_id}
            )
        assert found == "mine"


async def test_wait_for_gives_up_after_the_timeout(replication: Replication) -> None:
    async with replica_registry(replication) as registry:
        member = ReplicaMember(registry["replica"])
        async with ReplicaSet(registry["primary"], [member]) as replicas:
            await eventually(lambda: member.replay_lsn is not None, "the first round")
            started = time.monotonic()
            assert await replicas.wait_for(MAX_LSN, 0.3) is None
            assert 0.3 <= time.monotonic() - started < 1.0
            assert member.replay_lsn is not None
            assert await replicas.wait_for(member.replay_lsn, 0.3) is member


# ---- policies --------------------------------------------------------------------------

TWO_REPLICAS: dict[str, dict[str, object]] = {"replica_a": {}, "replica_b": {}}


async def test_round_robin_alternates(replication: Replication) -> None:
    async with replica_registry(replication, TWO_REPLICAS) as registry:
        a, b = ReplicaMember(registry["replica_a"]), ReplicaMember(registry["replica_b"])
        replicas = ReplicaSet(registry["primary"], [a, b])
        assert replicas.policy == "round_robin"
        await replicas.probe()
        assert [replicas.choose() for _ in range(6)] == [a, b, a, b, a, b]
        assert a.replay_lsn is not None
        assert [replicas.choose(min_lsn=a.replay_lsn) for _ in range(4)] == [a, b, a, b]
        replicas.report_failure(a)
        assert [replicas.choose() for _ in range(3)] == [b, b, b]


async def test_weighted_follows_the_smooth_pattern(replication: Replication) -> None:
    async with replica_registry(replication, TWO_REPLICAS) as registry:
        a = ReplicaMember(registry["replica_a"], weight=3)
        b = ReplicaMember(registry["replica_b"], weight=1)
        replicas = ReplicaSet(registry["primary"], [a, b], policy="weighted")
        await replicas.probe()
        assert [replicas.choose() for _ in range(8)] == [a, a, b, a, a, a, b, a]
        replicas.report_failure(b)
        assert [replicas.choose() for _ in range(3)] == [a, a, a]
        assert replicas.choose(min_lsn=MAX_LSN) is None


async def test_least_busy_prefers_the_member_with_fewer_sessions(
    replication: Replication,
) -> None:
    async with replica_registry(replication, TWO_REPLICAS) as registry:
        a, b = ReplicaMember(registry["replica_a"]), ReplicaMember(registry["replica_b"])
        replicas = ReplicaSet(registry["primary"], [a, b], policy="least_busy")
        await replicas.probe()
        # Equally busy: take turns.
        assert [replicas.choose() for _ in range(4)] == [a, b, a, b]
        a.database.leases.acquire()
        a.database.leases.acquire()
        b.database.leases.acquire()
        try:
            assert [replicas.choose() for _ in range(3)] == [b, b, b]
            b.database.leases.acquire()
            b.database.leases.acquire()
            try:
                assert [replicas.choose() for _ in range(3)] == [a, a, a]
                replicas.report_failure(a)
                assert replicas.choose() is b
            finally:
                b.database.leases.release()
                b.database.leases.release()
        finally:
            a.database.leases.release()
            a.database.leases.release()
            b.database.leases.release()
