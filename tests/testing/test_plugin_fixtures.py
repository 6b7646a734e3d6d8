"""The fixtures in this very suite, on the test app: isolation, mirroring, tenants."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import func, select, text

from dbrouter import DatabaseRouter, ReadOnlySessionError
from dbrouter.testing.environment import TestEnvironment
from dbrouter.testing.tenants import ThrowawayTenants
from tests.testing.app import Note


async def notes(router: DatabaseRouter) -> int:
    async with router.session() as session:
        return int(await session.scalar(select(func.count()).select_from(Note)) or 0)


async def test_a_write_through_the_app_is_read_through_the_replica(
    dbrouter_client: httpx.AsyncClient, dbrouter: DatabaseRouter
) -> None:
    created = await dbrouter_client.post("/notes", json={"text": "unique"})
    assert created.status_code == 201, created.text
    listed = await dbrouter_client.get("/notes")
    assert listed.json() == ["unique"]
    assert (await dbrouter_client.get("/standby")).json() == {"in_recovery": False}


async def test_the_same_unique_key_again_in_the_next_test(
    dbrouter_client: httpx.AsyncClient, dbrouter: DatabaseRouter
) -> None:
    assert await notes(dbrouter) == 0
    created = await dbrouter_client.post("/notes", json={"text": "unique"})
    assert created.status_code == 201, created.text


async def test_the_module_level_router_is_the_tests(
    dbrouter_client: httpx.AsyncClient, dbrouter: DatabaseRouter
) -> None:
    from tests.testing.app import router

    assert router is dbrouter
    assert (await dbrouter_client.post("/audit")).status_code == 204
    assert await notes(dbrouter) == 1


async def test_a_replica_session_stays_read_only(dbrouter: DatabaseRouter) -> None:
    async with dbrouter.session("replica") as session:
        with pytest.raises(Exception, match="read-only transaction"):
            await session.execute(text("INSERT INTO notes (text) VALUES ('x')"))
    async with dbrouter.session("replica") as session:
        session.add(Note(text="y"))
        with pytest.raises(ReadOnlySessionError):
            await session.flush()


async def test_tenants_are_isolated_from_each_other(
    dbrouter_tenant_client: Callable[[str], httpx.AsyncClient], dbrouter: DatabaseRouter
) -> None:
    acme, globex = dbrouter_tenant_client("acme"), dbrouter_tenant_client("globex")
    assert (await acme.post("/tenant/notes", json={"text": "a"})).status_code == 201
    assert (await acme.get("/tenant/notes")).json() == {"count": 1}
    assert (await globex.get("/tenant/notes")).json() == {"count": 0}
    assert await notes(dbrouter) == 0


@pytest.mark.dbrouter(mirror=False)
async def test_without_mirroring_the_replica_is_the_standby(
    dbrouter_client: httpx.AsyncClient,
) -> None:
    assert (await dbrouter_client.get("/standby")).json() == {"in_recovery": True}
    assert (await dbrouter_client.post("/notes", json={"text": "unseen"})).status_code == 201
    # The client that wrote reads its write (on the primary, by its consistency token);
    # the standby never sees a write of the test, which is never committed.
    assert (await dbrouter_client.get("/notes")).json() == ["unseen"]
    dbrouter_client.cookies.clear()
    assert (await dbrouter_client.get("/notes")).json() == []


async def test_a_tenant_made_for_the_test(
    dbrouter_tenants: ThrowawayTenants,
    dbrouter_tenant_client: Callable[[str], httpx.AsyncClient],
    dbrouter_environment: TestEnvironment,
) -> None:
    tenant = await dbrouter_tenants.create()
    client = dbrouter_tenant_client(tenant)
    assert (await client.post("/tenant/notes", json={"text": "a"})).status_code == 201
    assert (await client.get("/tenant/notes")).json() == {"count": 1}
    assert tenant in await dbrouter_environment.admin.list_tenants()
    assert dbrouter_tenants.created == (tenant,)


SHARED: list[str] = []


@pytest.mark.parametrize("attempt", [1, 2])
async def test_a_tenant_made_for_the_session(
    dbrouter_session_tenants: ThrowawayTenants,
    dbrouter_tenant_client: Callable[[str], httpx.AsyncClient],
    attempt: int,
) -> None:
    if not SHARED:
        SHARED.append(await dbrouter_session_tenants.create("shared"))
    client = dbrouter_tenant_client(SHARED[0])
    assert (await client.get("/tenant/notes")).json() == {"count": 0}
    assert (await client.post("/tenant/notes", json={"text": "same"})).status_code == 201
