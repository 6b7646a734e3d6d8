"""Pool names as the SPEC gives them, known before any connection is made, and the 503s
answered while the router shuts down."""

# No ``from __future__ import annotations``: FastAPI resolves the endpoint annotations.

from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbrouter import DatabaseRouter, RouterSettings, get_db
from tests.conftest import serve


def test_replica_servers_are_named_by_host_and_port() -> None:
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": "postgresql://app:pw@db:5432/app"},
                "replica": {
                    "url": "postgresql://app:pw@r1/app",
                    "replica_of": "primary",
                    "hosts": [
                        {"url": "postgresql://app:pw@[::1]:6432/app"},
                        {"url": "postgresql://app:pw@r1:5432/app"},
                    ],
                },
            }
        )
    )
    snapshot = router.metrics()
    # The same server listed twice keeps two series apart.
    assert list(snapshot.pools) == [
        "primary",
        "replica@r1:5432",
        "replica@[::1]:6432",
        "replica@r1:5432#2",
    ]
    assert list(snapshot.replicas) == list(snapshot.pools)[1:]
    assert {server.database for server in snapshot.replicas.values()} == {"replica"}
    assert {pool.kind for pool in snapshot.pools.values()} == {"database", "replica"}
    assert "pw" not in repr(snapshot)


def test_a_router_without_tenants_or_budget_has_none_of_their_figures() -> None:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": "sqlite://"}}))
    snapshot = router.metrics()
    assert (snapshot.tenants, snapshot.budget, snapshot.replicas) == (None, None, {})
    # An in-memory SQLite database keeps its one connection outside any pool.
    assert snapshot.pools == {}
    assert router.metrics_collector() is router.metrics_collector()


async def test_requests_during_shutdown_are_counted_as_router_closed(pg_url: str) -> None:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": pg_url}}))
    app = FastAPI(lifespan=router.lifespan)

    @app.get("/one")
    async def one(db: Annotated[AsyncSession, Depends(get_db())]) -> int:
        return int(await db.scalar(text("SELECT 1")) or 0)

    router.metrics()
    async with serve(app) as client:
        assert (await client.get("/one")).status_code == 200
        await router.dispose()
        assert (await client.get("/one")).status_code == 503
    assert router.metrics().unavailable == {"primary": {"router closed": 1}}
