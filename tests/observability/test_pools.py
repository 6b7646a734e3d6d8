"""Pool metrics on real PostgreSQL pools: counts that match what the pool holds, timeouts
recorded as waits, creation and use times, and nothing measured before anyone asks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbrouter import DatabaseRouter, DatabaseUnavailableError, PoolMetrics, RouterSettings
from dbrouter.metrics.pools import MeteredPool
from tests.conftest import server_connections
from tests.support.postgres import CLIENT_BACKENDS


def router_on(url: str, **pool: object) -> DatabaseRouter:
    return DatabaseRouter(
        RouterSettings(databases={"primary": {"url": url, "connect_timeout": 5, **pool}})
    )


def primary(router: DatabaseRouter) -> PoolMetrics:
    return router.metrics().pools["primary"]


@contextlib.asynccontextmanager
async def holding(router: DatabaseRouter, count: int) -> AsyncIterator[list[AsyncSession]]:
    """*count* sessions, each holding a connection of the primary, until the block ends."""
    async with contextlib.AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(router.session()) for _ in range(count)]
        await asyncio.gather(*(session.execute(text("SELECT 1")) for session in sessions))
        yield sessions


async def test_used_and_idle_are_what_the_pool_holds(pg_url: str) -> None:
    router = router_on(pg_url, pool_size=3, max_overflow=2)
    async with router:
        figures = primary(router)
        assert (figures.used, figures.idle, figures.max, figures.idle_max) == (0, 0, 5, 3)
        assert figures.idle_min == 0
        async with holding(router, 5):
            figures = primary(router)
            assert (figures.used, figures.idle) == (5, 0)
            assert await server_connections(pg_url) == 5
        # The two overflow connections closed on return; three stay idle.
        figures = primary(router)
        assert (figures.used, figures.idle) == (0, 3)
        assert await server_connections(pg_url) == 3
        async with holding(router, 2):
            figures = primary(router)
            assert (figures.used, figures.idle) == (2, 1)
        assert figures.create_time.count == 5
        assert figures.use_time.count == 5
        assert primary(router).use_time.count == 7
        assert primary(router).wait_time.count == 7
        assert primary(router).pending_requests == 0


async def test_counts_stay_right_when_the_server_ends_connections(
    pg_url: str, postgres_admin_url: str
) -> None:
    router = router_on(pg_url, pool_size=3, max_overflow=0)
    async with router:
        async with holding(router, 3):
            pass
        assert (primary(router).used, primary(router).idle) == (0, 3)
        async with router.session() as session:
            await session.execute(
                text(
                    f"SELECT pg_terminate_backend(pid) FROM {CLIENT_BACKENDS} "
                    "AND datname = current_database()"
                )
            )
        await asyncio.sleep(0.2)  # the server's goodbyes reach the idle connections
        # Each terminated connection is replaced at its checkout; counts follow.
        async with holding(router, 3):
            assert (primary(router).used, primary(router).idle) == (3, 0)
        assert (primary(router).used, primary(router).idle) == (0, 3)
        assert await server_connections(pg_url) == 3


async def test_a_pool_timeout_is_counted_and_recorded_as_a_wait(pg_url: str) -> None:
    router = router_on(pg_url, pool_size=1, max_overflow=0, pool_timeout=0.3)
    router.metrics()
    async with router:
        async with holding(router, 1):
            waiting = asyncio.create_task(_one_query(router))
            await asyncio.sleep(0.1)
            assert primary(router).pending_requests == 1
            with pytest.raises(DatabaseUnavailableError):
                await waiting
        figures = primary(router)
        assert figures.timeouts == 1
        assert figures.pending_requests == 0
        # Two checkouts: the one that got the connection, and the one that timed out
        # after pool_timeout.
        assert figures.wait_time.count == 2
        assert figures.wait_time.sum >= 0.3
        slow = dict(figures.wait_time.cumulative())
        assert slow[0.1] == 1
        assert slow[0.5] == 2


async def _one_query(router: DatabaseRouter) -> None:
    async with router.session() as session:
        await session.execute(text("SELECT 1"))


async def test_nothing_is_measured_until_metrics_are_asked_for(pg_url: str) -> None:
    router = router_on(pg_url, pool_size=2)
    async with router:
        pool = router.engine().sync_engine.pool
        assert isinstance(pool, MeteredPool)
        assert pool.meter is None
        await _one_query(router)
        figures = primary(router)
        assert pool.meter is not None
        # The connection opened before is counted; its creation and use were not measured.
        assert (figures.idle, figures.create_time.count, figures.use_time.count) == (1, 0, 0)
        await _one_query(router)
        assert primary(router).use_time.count == 1


async def test_the_meter_survives_disposing_the_engine(pg_url: str) -> None:
    router = router_on(pg_url, pool_size=2)
    async with router:
        await _one_query(router)
        router.metrics()
        await router.engine().dispose()
        await _one_query(router)
        figures = primary(router)
        assert (figures.used, figures.idle, figures.use_time.count) == (0, 1, 1)
