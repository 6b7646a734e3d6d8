"""Upgrading, downgrading and checking a whole fleet through the Python API, on real
PostgreSQL: named databases, a replica that is never migrated, and tenants with a
database or a schema each."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from dbrouter import DatabaseRouter, migrations
from tests.migrations.conftest import TENANTS, Fleet, tables_of, version_of


async def test_upgrade_migrates_every_database_and_tenant_database(
    database_fleet: Fleet,
) -> None:
    fleet = database_fleet
    async with fleet.router() as router:
        report = await migrations.upgrade(router)
    assert [result.target for result in report.targets] == [
        "database:primary",
        "database:analytics",
        *fleet.tenant_targets,
    ]
    assert report.ok, report.as_dict()
    assert {result.status for result in report.targets} == {"ok"}
    assert report["database:primary"].before == ()
    assert report["database:primary"].after == ("p2",)
    assert await version_of(fleet.urls["database:primary"]) == ["p2"]
    assert await tables_of(fleet.urls["database:primary"]) == {"alembic_version", "plans"}
    assert await version_of(fleet.urls["database:analytics"]) == ["a1"]
    assert await tables_of(fleet.urls["database:analytics"]) == {"alembic_version", "events"}
    for target in fleet.tenant_targets:
        assert report[target].after == ("t2",)
        assert await version_of(fleet.urls[target]) == ["t2"]
        assert await tables_of(fleet.urls[target]) == {"alembic_version", "notes", "raw_marks"}
    # The replica follows its primary: nothing was run on it.
    assert await tables_of(fleet.urls["replica"]) == set()

    async with fleet.router() as router:
        again = await migrations.upgrade(router)
    assert {result.status for result in again.targets} == {"unchanged"}
    assert again.as_dict()["failed"] == 0


async def test_upgrade_migrates_each_schema_tenant_in_its_own_schema(
    schema_fleet: Fleet,
) -> None:
    fleet = schema_fleet
    url = fleet.urls["database:primary"]
    async with fleet.router() as router:
        report = await migrations.upgrade(router)
    assert report.ok, report.as_dict()
    assert await version_of(url) == ["p2"]
    assert await tables_of(url) == {"alembic_version", "plans"}
    for tenant in TENANTS:
        schema = f"tenant_{tenant}"
        assert await version_of(url, schema) == ["t2"]
        assert await tables_of(url, schema) == {"alembic_version", "notes", "raw_marks"}


async def test_a_tenant_whose_data_breaks_a_revision_fails_alone(database_fleet: Fleet) -> None:
    fleet = database_fleet
    async with fleet.router() as router:
        first = await migrations.upgrade(router, "t1", tenants=TENANTS)
        assert first.ok, first.as_dict()
        connection = await asyncpg.connect(fleet.urls["tenant:hooli"])
        try:
            await connection.execute("INSERT INTO notes (body) VALUES ('')")
        finally:
            await connection.close()
        report = await migrations.upgrade(router, tenants=TENANTS)
    assert report.failed == 1
    failed = report["tenant:hooli"]
    assert failed.status == "failed"
    assert failed.before == failed.after == ("t1",)
    assert failed.error is not None
    assert "ck_notes_body_not_empty" in failed.error
    assert "SQLSTATE 23514" in failed.error
    assert await version_of(fleet.urls["tenant:hooli"]) == ["t1"]
    for tenant in TENANTS:
        if tenant != "hooli":
            assert report[f"tenant:{tenant}"].status == "ok"
            assert await version_of(fleet.urls[f"tenant:{tenant}"]) == ["t2"]


async def test_status_is_the_drift_check(schema_fleet: Fleet) -> None:
    fleet = schema_fleet
    async with fleet.router() as router:
        behind = await migrations.status(router)
        assert not behind.ok
        assert behind.behind == len(TENANTS) + 1
        await migrations.upgrade(router)
        at_head = await migrations.status(router)
        assert at_head.ok, at_head.as_dict()
        assert {result.behind for result in at_head.targets} == {False}
        assert all(result.before == result.after for result in at_head.targets)

        down = await migrations.downgrade(router, "-1", tenants=["globex"])
        assert down["tenant:globex"].status == "ok"
        assert down["tenant:globex"].after == ("t1",)
        drift = await migrations.status(router)
        assert drift.behind == 1
        assert [r.target for r in drift.targets if r.behind] == ["tenant:globex"]
        assert drift.as_dict()["targets"][2] == {
            "target": "tenant:globex",
            "before": ["t1"],
            "after": ["t1"],
            "status": "unchanged",
            "error": None,
            "seconds": drift["tenant:globex"].as_dict()["seconds"],
            "behind": True,
        }

        await migrations.upgrade(router, tenants=["globex"])
        assert (await migrations.status(router)).ok
        now = await migrations.current(router, all_tenants=True)
    assert [result.target for result in now.targets] == fleet.tenant_targets
    assert {result.after for result in now.targets} == {("t2",)}
    assert all(result.behind is None for result in now.targets)


async def test_downgrade_to_base_and_upgrade_again(database_fleet: Fleet) -> None:
    fleet = database_fleet
    # The replica probes of an open router hold two of the five.
    async with fleet.router(max_connections=5) as router:
        await migrations.upgrade(router)
        down = await migrations.downgrade(router, "base")
        assert {result.after for result in down.targets} == {()}
        for target in fleet.tenant_targets:
            assert await tables_of(fleet.urls[target]) == {"alembic_version"}
        again = await migrations.downgrade(router, "base")
        assert {result.status for result in again.targets} == {"unchanged"}
        async with most_connections(router) as seen:
            up = await migrations.upgrade(router, concurrency=8)
    assert {result.status for result in up.targets} == {"ok"}
    for target in fleet.tenant_targets:
        assert await version_of(fleet.urls[target]) == ["t2"]
    # Concurrency 8, yet never more server connections than max_connections.
    assert 1 <= max(seen) <= 5


@asynccontextmanager
async def most_connections(router: DatabaseRouter) -> AsyncIterator[list[int]]:
    """Samples of the server connections *router* holds (its ``max_connections``
    count), taken while the block runs."""
    seen: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen.append(router.open_connections or 0)
            await asyncio.sleep(0.001)

    task = asyncio.create_task(watch())
    try:
        yield seen
    finally:
        done.set()
        await task
