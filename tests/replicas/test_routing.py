"""Replica sessions in an app, on a real primary and streaming standby: where reads land,
read-only everywhere, failover and recovery, and read-your-writes with tokens."""

# No ``from __future__ import annotations``: FastAPI resolves the endpoint annotations.

import asyncio
import contextlib
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbrouter import (
    DatabaseRouter,
    DatabaseUnavailableError,
    ReadOnlySessionError,
    RouterSettings,
    get_db,
)
from dbrouter.cli import main
from dbrouter.replicas import parse_lsn
from dbrouter.replicas.consistency import TOKEN_COOKIE, TOKEN_HEADER, format_token, parse_token
from tests.conftest import serve
from tests.support.replication import (
    REPLICA_SETTINGS,
    Replication,
    eventually,
    primary_and_standby_fixture,
    replication_fixture,
)

__all__ = ["primary_and_standby_fixture", "replication_fixture"]

Replica = Annotated[AsyncSession, Depends(get_db("replica"))]
Write = Annotated[AsyncSession, Depends(get_db("primary", commit=True))]


class Model(DeclarativeBase):
    pass


class Event(Model):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    payload: Mapped[str]


def build(pair: Replication, **replica: Any) -> tuple[DatabaseRouter, FastAPI]:
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": pair.primary_url, "connect_timeout": 2, "pool_timeout": 2},
                "replica": {"url": pair.standby_url, **REPLICA_SETTINGS, **replica},
            }
        )
    )
    app = FastAPI(lifespan=router.lifespan)
    app.include_router(router.health_router())

    @app.get("/read")
    async def read(db: Replica, payload: str = "") -> dict[str, Any]:
        recovery = await db.scalar(text("SELECT pg_is_in_recovery()"))
        found = await db.scalar(
            text("SELECT count(*) FROM events WHERE payload = :p"), {"p": payload}
        )
        return {"standby": recovery, "found": found}

    @app.post("/write")
    async def write(db: Write, payload: str) -> str:
        await db.execute(text("INSERT INTO events (payload) VALUES (:p)"), {"p": payload})
        return "ok"

    @app.post("/replica/raw")
    async def raw_write(db: Replica, payload: str) -> str:
        await db.execute(text("INSERT INTO events (payload) VALUES (:p)"), {"p": payload})
        await db.commit()
        return "wrote"

    @app.post("/replica/autocommit")
    async def autocommit_write(db: Replica, payload: str) -> str:
        await db.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        await db.execute(text("INSERT INTO events (payload) VALUES (:p)"), {"p": payload})
        return "wrote"

    @app.post("/replica/orm")
    async def orm_write(db: Replica, payload: str) -> str:
        db.add(Event(payload=payload))
        await db.commit()
        return "wrote"

    return router, app


async def primary_count(pair: Replication, payload: str) -> int:
    rows = await asyncio.to_thread(
        pair.primary.query, f"SELECT count(*) FROM events WHERE payload = '{payload}'", "app"
    )
    return int(rows[0][0])


async def test_reads_land_on_the_standby(replication: Replication) -> None:
    _, app = build(replication)
    async with serve(app) as client:
        bodies = [(await client.get("/read")).json() for _ in range(5)]
    assert all(body["standby"] is True for body in bodies)


@pytest.mark.parametrize("path", ["/replica/raw", "/replica/orm"])
async def test_writes_through_a_replica_fail_and_change_nothing(
    replication: Replication, path: str
) -> None:
    _, app = build(replication)
    async with serve(app, raise_app_exceptions=True) as client:
        with pytest.raises(Exception, match="read-only") as caught:
            await client.post(path, params={"payload": f"ro-{path[-3:]}"})
    if path.endswith("orm"):
        assert isinstance(caught.value, ReadOnlySessionError)
    assert await primary_count(replication, f"ro-{path[-3:]}") == 0


@pytest.mark.parametrize("path", ["/replica/raw", "/replica/autocommit"])
async def test_a_replica_session_that_falls_back_is_still_read_only(
    replication: Replication, path: str
) -> None:
    _, app = build(replication)
    await asyncio.to_thread(replication.standby.stop, "immediate")
    async with serve(app, raise_app_exceptions=True) as client:
        await client.get("/read")  # may fail once: that is how the replica leaves rotation
        assert (await client.get("/read")).json()["standby"] is False
        with pytest.raises(Exception, match="read-only"):
            await client.post(path, params={"payload": f"fallback-{path[-3:]}"})
    assert await primary_count(replication, f"fallback-{path[-3:]}") == 0


async def test_read_your_writes_with_a_token(replication: Replication) -> None:
    router, app = build(replication)
    async with serve(app) as client:
        await eventually(lambda: router.has_replicas, "replication ready")
        await replication.pause_replay()
        written = await client.post("/write", params={"payload": "ryw"})
        assert written.status_code == 200
        token = written.headers[TOKEN_HEADER]
        assert set(parse_token(token)) == {"primary"}
        assert f"{TOKEN_COOKIE}={token}" in written.headers["set-cookie"]
        assert client.cookies[TOKEN_COOKIE] == token
        client.cookies.clear()

        without = (await client.get("/read", params={"payload": "ryw"})).json()
        assert without == {"standby": True, "found": 0}  # replay is paused
        with_token = await client.get(
            "/read", params={"payload": "ryw"}, headers={TOKEN_HEADER: token}
        )
        assert with_token.json() == {"standby": False, "found": 1}
        client.cookies.set(TOKEN_COOKIE, token)
        assert (await client.get("/read", params={"payload": "ryw"})).json()["found"] == 1
        client.cookies.clear()

        await replication.resume_replay()
        replica_set = router.replica_set("replica")
        mark = parse_token(token)["primary"]
        assert isinstance(mark, int)
        await eventually(
            lambda: replica_set.choose(mark) is not None,
            "the standby replays the write",
        )
        again = await client.get("/read", params={"payload": "ryw"}, headers={TOKEN_HEADER: token})
        assert again.json() == {"standby": True, "found": 1}


async def test_a_token_points_past_the_commit_not_a_savepoint(
    replication: Replication,
) -> None:
    _, app = build(replication)
    before_commit: list[int] = []

    @app.post("/savepoint")
    async def savepoint(db: Annotated[AsyncSession, Depends(get_db("primary"))]) -> str:
        async with db.begin_nested():
            await db.execute(text("INSERT INTO events (payload) VALUES ('nested')"))
        position = await db.scalar(text("SELECT pg_current_wal_insert_lsn()::text"))
        before_commit.append(parse_lsn(str(position)))
        await db.commit()
        return "ok"

    async with serve(app) as client:
        token = (await client.post("/savepoint")).headers[TOKEN_HEADER]
    # Read after the commit, the token is past everything written before it.
    assert parse_token(token)["primary"] > before_commit[0]


async def test_a_token_needs_no_second_connection(replication: Replication) -> None:
    # The endpoint commits, then reads on: its session holds the only pooled connection
    # when the response starts. The token must not wait for another one.
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {
                    "url": replication.primary_url,
                    "pool_size": 1,
                    "max_overflow": 0,
                    "pool_timeout": 1,
                },
                "replica": {"url": replication.standby_url, **REPLICA_SETTINGS},
            }
        )
    )
    app = FastAPI(lifespan=router.lifespan)

    @app.post("/write-then-read")
    async def write_then_read(db: Annotated[AsyncSession, Depends(get_db("primary"))]) -> int:
        await db.execute(text("INSERT INTO events (payload) VALUES ('held')"))
        await db.commit()
        return int(await db.scalar(text("SELECT count(*) FROM events")) or 0)

    @app.get("/nothing")
    async def nothing(db: Annotated[AsyncSession, Depends(get_db("primary"))]) -> str:
        await db.commit()  # a commit that never touched the database
        return "ok"

    async with serve(app) as client:
        responses = await asyncio.gather(*(client.post("/write-then-read") for _ in range(3)))
        assert [response.status_code for response in responses] == [200, 200, 200]
        marks = [parse_token(response.headers[TOKEN_HEADER])["primary"] for response in responses]
        assert len(set(marks)) == 3
        assert TOKEN_HEADER not in (await client.get("/nothing")).headers


@pytest.mark.parametrize(
    "token", ["garbage", "primary:zz/1", "primary:1/2,,", "x" * 5000, "primary:@abc", ""]
)
async def test_a_malformed_token_is_ignored(replication: Replication, token: str) -> None:
    _, app = build(replication)
    async with serve(app) as client:
        response = await client.get("/read", headers={TOKEN_HEADER: token})
    assert response.status_code == 200
    assert response.json()["standby"] is True


async def test_a_standby_that_goes_down_costs_at_most_one_request(
    replication: Replication,
) -> None:
    router, app = build(replication)
    statuses: Counter[int] = Counter()
    served_by: Counter[bool] = Counter()
    async with serve(app) as client:
        for _ in range(5):
            assert (await client.get("/read")).json()["standby"] is True
        await asyncio.to_thread(replication.standby.stop, "immediate")
        for _ in range(30):
            response = await client.get("/read")
            statuses[response.status_code] += 1
            if response.status_code == 200:
                served_by[response.json()["standby"]] += 1
        assert statuses[503] <= 1, statuses
        assert statuses[200] == 30 - statuses[503], statuses
        assert served_by == Counter({False: statuses[200]})

        await asyncio.to_thread(replication.standby.start)
        replica_set = router.replica_set("replica")
        took = await eventually(
            lambda: replica_set.members[0].in_rotation,
            "the standby comes back into rotation",
        )
        assert took < 10 * replica_set.interval + 2
        assert (await client.get("/read")).json()["standby"] is True


async def test_a_lagging_standby_leaves_rotation(replication: Replication) -> None:
    router, app = build(replication, max_lag=0.5)
    async with serve(app) as client:
        await replication.pause_replay()
        replica_set = router.replica_set("replica")
        member = replica_set.members[0]

        async def keep_writing() -> None:
            while member.in_rotation:
                await client.post("/write", params={"payload": "lag"})
                await asyncio.sleep(0.05)

        writer = asyncio.create_task(keep_writing())
        await eventually(lambda: not member.in_rotation, "the standby leaves rotation")
        await writer
        assert member.reason is not None
        assert member.reason.startswith("lagging")
        assert (await client.get("/read")).json()["standby"] is False
        health = (await client.get("/health/databases")).json()
        status = health["databases"]["replica"]["replicas"][0]
        assert status["in_rotation"] is False
        assert status["lag_seconds"] > 0.5
        assert status["lag_bytes"] > 0
        await replication.resume_replay()
        await eventually(lambda: member.in_rotation, "the standby catches up")


async def test_fallback_error_answers_503(replication: Replication) -> None:
    _, app = build(replication, fallback="error")
    await asyncio.to_thread(replication.standby.stop, "immediate")
    async with serve(app) as client:
        statuses = [(await client.get("/read")).status_code for _ in range(3)]
        # A token asks for a recent enough replica; it is no way around fallback="error".
        with_token = await client.get("/read", headers={TOKEN_HEADER: "primary:0/1"})
    assert statuses == [503, 503, 503]
    assert with_token.status_code == 503


async def test_health_shows_every_replica(replication: Replication) -> None:
    _, app = build(replication)
    async with serve(app) as client:
        await asyncio.sleep(0.5)
        body = (await client.get("/health/databases")).json()
    replica = body["databases"]["replica"]
    assert replica["required"] is False
    assert [status["name"] for status in replica["replicas"]] == ["replica"]
    assert replica["replicas"][0]["in_rotation"] is True
    assert replica["replicas"][0]["replay_lsn"]


async def test_sqlite_time_window(tmp_path: Path) -> None:
    primary = f"sqlite:///{tmp_path / 'primary.db'}"
    stale = f"sqlite:///{tmp_path / 'stale.db'}"  # a "replica" that never sees writes
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": primary},
                "replica": {"url": stale, "replica_of": "primary", "consistency_window": 1.0},
            }
        )
    )
    for url in (primary, stale):
        setup = DatabaseRouter(RouterSettings(databases={"primary": {"url": url}}))
        async with setup, setup.session(commit=True) as session:
            await session.execute(
                text("CREATE TABLE events (id integer primary key, payload text)")
            )
    app = FastAPI(lifespan=router.lifespan)

    @app.post("/write")
    async def write(db: Write) -> str:
        await db.execute(text("INSERT INTO events (payload) VALUES ('x')"))
        return "ok"

    @app.get("/count")
    async def count(db: Replica) -> int:
        return int(await db.scalar(text("SELECT count(*) FROM events")) or 0)

    async with serve(app) as client:
        token = (await client.post("/write")).headers[TOKEN_HEADER]
        assert token.startswith("primary:@")
        client.cookies.clear()
        assert (await client.get("/count")).json() == 0
        assert (await client.get("/count", headers={TOKEN_HEADER: token})).json() == 1
        await asyncio.sleep(1.1)
        assert (await client.get("/count", headers={TOKEN_HEADER: token})).json() == 0


async def test_reads_spread_over_hosts(replication: Replication) -> None:
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": replication.primary_url},
                "replica": {
                    "url": replication.standby_url,
                    **REPLICA_SETTINGS,
                    "hosts": [{"url": replication.standby_url, "weight": 3}],
                    "balance": "weighted",
                },
            }
        )
    )
    used: Counter[str] = Counter()
    async with router:
        for _ in range(8):
            async with router.session("replica") as session:
                assert await session.scalar(text("SELECT pg_is_in_recovery()")) is True
                used[str(id(session.bind))] += 1
    assert sorted(used.values()) == [2, 6]


def test_a_token_never_points_past_a_page_header() -> None:
    from dbrouter.replicas.consistency import before_page_header

    block, segment = 8192, 16 * 1024 * 1024
    assert before_page_header(3 * block + 24, block, segment) == 3 * block
    assert before_page_header(2 * segment + 40, block, segment) == 2 * segment
    assert before_page_header(3 * block + 100, block, segment) == 3 * block + 100


async def test_the_read_only_mark_does_not_outlive_the_session(replication: Replication) -> None:
    # One connection to the primary: a fallback read borrows it, then a write reuses it.
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": replication.primary_url, "pool_size": 1, "max_overflow": 0},
                "replica": {"url": replication.standby_url, **REPLICA_SETTINGS},
            }
        )
    )
    await asyncio.to_thread(replication.standby.stop, "immediate")
    async with router:
        with contextlib.suppress(Exception):
            async with router.session("replica") as session:
                await session.execute(text("SELECT 1"))  # may fail once: leaves rotation
        async with router.session("replica") as session:
            assert await session.scalar(text("SELECT pg_is_in_recovery()")) is False
            assert await session.scalar(text("SHOW transaction_read_only")) == "on"
        async with router.session("primary", commit=True) as session:
            assert await session.scalar(text("SHOW transaction_read_only")) == "off"
            await session.execute(text("INSERT INTO events (payload) VALUES ('after-ro')"))
    assert await primary_count(replication, "after-ro") == 1


async def test_check_outside_a_lifespan_measures_rotation(
    replication: Replication, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    router, _ = build(replication)
    async with router:
        report = await router.check()
        [healthy] = report.databases["replica"].replicas
        assert (healthy.in_rotation, healthy.reason) == (True, None)
        assert healthy.replay_lsn is not None
    monkeypatch.setenv("DBROUTER_DATABASES__PRIMARY__URL", replication.primary_url)
    monkeypatch.setenv("DBROUTER_DATABASES__REPLICA__URL", replication.standby_url)
    monkeypatch.setenv("DBROUTER_DATABASES__REPLICA__REPLICA_OF", "primary")
    monkeypatch.setenv("DBROUTER_DATABASES__REPLICA__CONNECT_TIMEOUT", "2")
    assert await asyncio.to_thread(main, ["check"]) == 0
    assert "  replica            in rotation, lag" in capsys.readouterr().out

    await asyncio.to_thread(replication.standby.stop, "immediate")
    router, _ = build(replication)
    async with router:
        report = await router.check()
    assert report.ok  # the replica falls back to the primary: not required
    [down] = report.databases["replica"].replicas
    assert (down.in_rotation, down.reason) == (False, "unreachable")
    assert await asyncio.to_thread(main, ["check"]) == 0
    assert "  replica            out: unreachable" in capsys.readouterr().out


async def test_replica_connections_are_read_only_from_the_start(
    replication: Replication,
) -> None:
    router, _ = build(replication)
    async with router:
        async with router.engine("replica").connect() as connection:
            assert await connection.scalar(text("SHOW default_transaction_read_only")) == "on"
        async with router.session("replica") as session:
            assert await session.scalar(text("SHOW transaction_read_only")) == "on"
        async with router.engine("primary").connect() as connection:
            assert await connection.scalar(text("SHOW default_transaction_read_only")) == "off"


async def test_sessions_sent_to_a_standby_that_just_went_down_move_on(
    replication: Replication,
) -> None:
    # The probe has seen the standby healthy and will not look again for a minute; every
    # request now is routed to it, finds it gone when it connects, and moves to the primary.
    router, app = build(replication, health_check_interval=60)
    async with serve(app) as client:
        assert (await client.get("/read")).json()["standby"] is True
        replica_set = router.replica_set("replica")
        member = replica_set.members[0]
        await eventually(lambda: member.last_probe is not None, "the first probe round")
        assert member.in_rotation
        await asyncio.to_thread(replication.standby.stop, "immediate")
        reads = [client.get("/read") for _ in range(10)]
        # Writes through replica sessions that move stay read-only on the primary.
        writes = [client.post("/replica/raw", params={"payload": "moved"}) for _ in range(3)]
        responses = await asyncio.gather(*reads, *writes)
        assert [response.status_code for response in responses] == [200] * 10 + [500] * 3
        assert {response.json()["standby"] for response in responses[:10]} == {False}
        assert (member.in_rotation, member.reason) == (False, "unreachable")
    assert await primary_count(replication, "moved") == 0


async def test_a_session_waiting_for_its_token_still_moves_off_a_dead_standby(
    replication: Replication,
) -> None:
    router, app = build(replication, health_check_interval=60, consistency_wait=1.0)
    async with serve(app) as client:
        assert (await client.get("/read")).json()["standby"] is True
        replica_set = router.replica_set("replica")
        member = replica_set.members[0]
        await eventually(lambda: member.replay_lsn is not None, "the first probe round")
        assert member.replay_lsn is not None
        token = format_token({"primary": member.replay_lsn})
        await asyncio.to_thread(replication.standby.stop, "immediate")
        response = await client.get("/read", headers={TOKEN_HEADER: token})
    assert response.status_code == 200
    assert response.json()["standby"] is False


async def test_a_full_connection_budget_is_no_outage_of_the_standby(
    replication: Replication,
) -> None:
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": replication.primary_url, "pool_timeout": 1},
                "replica": {
                    "url": replication.standby_url,
                    **REPLICA_SETTINGS,
                    "health_check_interval": 60,
                    "pool_timeout": 1,
                },
            },
            max_connections=1,
        )
    )
    async with router:
        replica_set = router.replica_set("replica")
        member = replica_set.members[0]
        async with router.session("primary") as holder:
            await holder.execute(text("SELECT 1"))  # the only connection the budget allows
            with pytest.raises(DatabaseUnavailableError, match="max_connections") as caught:
                async with router.session("replica") as session:
                    await session.execute(text("SELECT 1"))
            assert caught.value.name == "replica"  # it did not move to the primary
        assert (member.in_rotation, member.reason) == (True, None)
