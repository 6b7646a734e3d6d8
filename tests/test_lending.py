"""Lending a session: closing it in place, and what a cancellation in the middle of the
close leaves behind (nothing)."""

from __future__ import annotations

import asyncio
import gc

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.util import await_only

from dbrouter import DatabaseRouter, RouterSettings
from tests.conftest import server_connections


def slow_rollbacks(router: DatabaseRouter, seconds: float) -> None:
    """Every rollback on *router*'s primary waits *seconds* first: a close that a
    cancellation can interrupt."""

    def wait(connection: Connection) -> None:
        await_only(asyncio.sleep(seconds))

    event.listen(router.engine().sync_engine, "rollback", wait)


async def test_a_cancellation_in_the_middle_of_the_close_leaves_nothing_checked_out(
    pg_url: str,
) -> None:
    async with DatabaseRouter(
        RouterSettings(databases={"primary": {"url": pg_url, "pool_size": 2, "max_overflow": 0}})
    ) as router:
        slow_rollbacks(router, 0.3)
        entered = asyncio.Event()

        async def read() -> None:
            async with router.session() as session:
                await session.execute(text("SELECT 1"))
                entered.set()
            # The block's end closes the session: rollback, then the connection goes back.

        for _ in range(4):
            entered.clear()
            task = asyncio.create_task(read())
            await entered.wait()
            await asyncio.sleep(0.1)  # in the middle of the rollback
            task.cancel()
            results = await asyncio.gather(task, return_exceptions=True)
            assert isinstance(results[0], asyncio.CancelledError)
            gc.collect()  # a connection nobody gave back would warn here (an error)
            assert router.engine().pool.checkedout() == 0  # type: ignore[attr-defined]
        assert await server_connections(pg_url) <= 2
        # The pool still lends both of its connections.
        async with router.session() as first, router.session() as second:
            for session in (first, second):
                assert await session.scalar(text("SELECT 1")) == 1


async def test_a_close_cancelled_again_and_again_still_hands_the_connection_back(
    pg_url: str,
) -> None:
    async with DatabaseRouter(
        RouterSettings(databases={"primary": {"url": pg_url, "pool_size": 1, "max_overflow": 0}})
    ) as router:
        slow_rollbacks(router, 0.2)
        entered = asyncio.Event()

        async def read() -> None:
            async with router.session() as session:
                await session.execute(text("SELECT 1"))
                entered.set()

        task = asyncio.create_task(read())
        await entered.wait()
        for _ in range(5):
            await asyncio.sleep(0.05)
            task.cancel()
        results = await asyncio.gather(task, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        gc.collect()
        assert router.engine().pool.checkedout() == 0  # type: ignore[attr-defined]
        async with router.session() as session:
            assert await session.scalar(text("SELECT 1")) == 1
