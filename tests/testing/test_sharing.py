"""The shared connection of a test, driven directly: savepoints that nest, units that wait
for their turn, and what it refuses, each with a message that says what to do."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from dbrouter import DatabaseRouter, RouterSettings
from dbrouter.testing.errors import IsolationError
from dbrouter.testing.factory import IsolatingEngineFactory
from dbrouter.testing.isolation import Isolation
from dbrouter.testing.sharing import SharedConnection, SharedConnections


@pytest.fixture
async def connections() -> AsyncIterator[SharedConnections]:
    shared = SharedConnections(wait=0.5)
    yield shared
    await shared.close_all()


def router_on(url: str, isolation: Isolation) -> DatabaseRouter:
    settings = RouterSettings(databases={"primary": {"url": url}})
    return DatabaseRouter(settings, engine_factory=IsolatingEngineFactory.bound(isolation))


async def test_sessions_that_end_out_of_order_are_refused(
    pg_url: str, connections: SharedConnections
) -> None:
    isolation = Isolation(connections)
    router = router_on(pg_url, isolation)
    first = router.sessionmaker()()
    second = router.sessionmaker()()
    await first.execute(text("SELECT 1"))
    await second.execute(text("SELECT 2"))
    with pytest.raises(IsolationError, match="overlap out of order"):
        await first.commit()
    await second.rollback()
    await first.rollback()
    await first.close()
    await second.close()
    await router.dispose()
    await isolation.finish()


async def test_sibling_tasks_take_turns(pg_url: str, connections: SharedConnections) -> None:
    isolation = Isolation(connections)
    router = router_on(pg_url, isolation)
    async with router.session(commit=True) as session:
        await session.execute(text("CREATE TABLE turns (task int)"))

    async def write(task: int) -> None:
        async with router.session(commit=True) as session:
            for _ in range(3):
                await session.execute(text("INSERT INTO turns VALUES (:task)"), {"task": task})
                await asyncio.sleep(0)

    await asyncio.gather(*(write(task) for task in range(4)))
    async with router.session() as session:
        assert await session.scalar(text("SELECT count(*) FROM turns")) == 12
    assert (await router.check()).ok
    await router.dispose()
    await isolation.finish()


async def test_a_unit_waits_no_longer_than_it_may(
    pg_url: str, connections: SharedConnections
) -> None:
    isolation = Isolation(connections)
    router = router_on(pg_url, isolation)
    held = asyncio.Event()

    async def other() -> None:
        await held.wait()
        async with router.session() as session:
            await session.execute(text("SELECT 2"))

    # A task started before the holder's transaction waits for it to end, here in vain.
    task = asyncio.get_running_loop().create_task(other())
    async with router.session() as holder:
        await holder.execute(text("SELECT 1"))
        held.set()
        with pytest.raises(IsolationError, match=r"waited 0.5 s for another one to end"):
            await task
    await router.dispose()
    await isolation.finish()


async def test_commits_check_deferred_constraints(
    pg_url: str, connections: SharedConnections
) -> None:
    isolation = Isolation(connections)
    router = router_on(pg_url, isolation)
    async with router.session(commit=True) as session:
        await session.execute(text("CREATE TABLE parents (id int PRIMARY KEY)"))
        await session.execute(
            text(
                "CREATE TABLE children (parent int REFERENCES parents "
                "DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    with pytest.raises(IntegrityError, match="foreign key"):
        async with router.session(commit=True) as session:
            await session.execute(text("INSERT INTO children VALUES (1)"))
    # The failed commit ended its transaction; the test's is fine and defers as before.
    async with router.session(commit=True) as session:
        await session.execute(text("INSERT INTO children VALUES (2)"))
        await session.execute(text("INSERT INTO parents VALUES (2)"))
    async with router.session() as session:
        assert await session.scalar(text("SELECT count(*) FROM children")) == 1
    await router.dispose()
    await isolation.finish()


async def test_other_isolation_levels_are_refused(
    pg_url: str, connections: SharedConnections
) -> None:
    isolation = Isolation(connections)
    router = router_on(pg_url, isolation)
    async with router.engine().connect() as connection:
        serializable = await connection.execution_options(isolation_level="SERIALIZABLE")
        with pytest.raises(IsolationError, match="isolation level 'serializable'"):
            await serializable.execute(text("SELECT 1"))
    await router.dispose()
    await isolation.finish()


async def test_nothing_is_lent_after_the_test(pg_url: str, connections: SharedConnections) -> None:
    isolation = Isolation(connections)
    router = router_on(pg_url, isolation)
    kept = router.sessionmaker()()
    await kept.execute(text("SELECT 1"))
    await isolation.finish()
    with pytest.raises(IsolationError, match="committed after its test ended"):
        await kept.commit()
    await kept.close()
    with pytest.raises(IsolationError, match="used outside a test"):
        async with router.session() as session:
            await session.execute(text("SELECT 1"))
    await router.dispose()
    # A new connection is refused before it is made.
    with pytest.raises(IsolationError, match="used after its test ended"):
        async with router_on(pg_url, isolation).session() as session:
            await session.execute(text("SELECT 1"))


async def test_a_shared_connection_outside_a_test(pg_url: str) -> None:
    shared = SharedConnection("app@db/app", {"dsn": pg_url})
    with pytest.raises(IsolationError, match="used outside a test"):
        await shared.unit(read_only=False).start()
    await shared.close()


async def test_another_event_loop_is_refused(pg_url: str) -> None:
    shared = SharedConnection("app@db/app", {"dsn": pg_url})
    shared.activate()
    await shared.connection()
    errors: list[BaseException] = []

    def in_a_thread() -> None:
        # An event loop of its own, as a test run on a loop other than the session's has.
        try:
            asyncio.run(shared.unit(read_only=False).start())
        except IsolationError as exc:
            errors.append(exc)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    await shared.close()
    assert errors, "the other loop was not refused"
    assert 'asyncio_default_test_loop_scope = "session"' in str(errors[0])


async def test_a_connection_lost_between_tests_is_made_again(
    pg_url: str, connections: SharedConnections
) -> None:
    for _ in range(2):
        isolation = Isolation(connections)
        router = router_on(pg_url, isolation)
        async with router.session() as session:
            pid = await session.scalar(text("SELECT pg_backend_pid()"))
        await router.dispose()
        await isolation.finish()
        killer = await asyncpg.connect(pg_url)
        try:
            await killer.execute("SELECT pg_terminate_backend($1)", pid)
        finally:
            await killer.close()
