"""The notes service against real PostgreSQL: every test in a transaction of its own on
every database it touches, rolled back when it ends."""

from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import text

from dbrouter import DatabaseRouter
from dbrouter.testing import ThrowawayTenants


async def test_a_note_written_on_the_primary_is_read_through_the_replica(
    dbrouter_client: httpx.AsyncClient,
) -> None:
    created = await dbrouter_client.post("/notes", json={"text": "hello"})
    assert created.status_code == 201, created.text
    # The replica mirrors the primary in tests: it sees the test's own write.
    assert (await dbrouter_client.get("/notes")).json() == ["hello"]


async def test_the_same_note_again_in_another_test(dbrouter_client: httpx.AsyncClient) -> None:
    # "hello" is unique, and the previous test committed it: nothing of it is left.
    created = await dbrouter_client.post("/notes", json={"text": "hello"})
    assert created.status_code == 201, created.text


async def test_each_tenant_sees_its_own_notes(
    dbrouter_tenant_client: Callable[[str], httpx.AsyncClient],
) -> None:
    acme, globex = dbrouter_tenant_client("acme"), dbrouter_tenant_client("globex")
    assert (await acme.post("/tenant/notes", json={"text": "for acme"})).status_code == 201
    assert (await acme.get("/tenant/notes")).json() == ["for acme"]
    assert (await globex.get("/tenant/notes")).json() == []


async def test_a_tenant_made_for_the_test(
    dbrouter_tenants: ThrowawayTenants,
    dbrouter_tenant_client: Callable[[str], httpx.AsyncClient],
) -> None:
    tenant = await dbrouter_tenants.create()  # dropped when the test ends
    client = dbrouter_tenant_client(tenant)
    assert (await client.post("/tenant/notes", json={"text": "new"})).status_code == 201
    assert (await client.get("/tenant/notes")).json() == ["new"]


async def test_the_replica_is_read_only(dbrouter: DatabaseRouter) -> None:
    async with dbrouter.session("replica") as session:
        with pytest.raises(Exception, match="read-only transaction"):
            await session.execute(text("INSERT INTO notes (text) VALUES ('no')"))


@pytest.mark.dbrouter(mirror=False)
async def test_a_test_can_read_the_real_standby(dbrouter_client: httpx.AsyncClient) -> None:
    assert (await dbrouter_client.get("/replica")).json() == {"standby": True}


def test_a_sync_test_gets_the_fixtures_too(seeded_note: str) -> None:
    assert seeded_note == "seeded"


async def test_nothing_is_left_behind(dbrouter: DatabaseRouter) -> None:
    async with dbrouter.session() as session:
        assert await session.scalar(text("SELECT count(*) FROM notes")) == 0
    for tenant in ("acme", "globex"):
        async with dbrouter.tenant_session(tenant) as session:
            assert await session.scalar(text("SELECT count(*) FROM notes")) == 0
