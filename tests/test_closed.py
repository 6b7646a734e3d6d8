"""Closed means closed: a session kept past its request, or any engine reached through a
router after `dispose()`, opens no connection and says why; nothing is left open."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import pytest
from fastapi import BackgroundTasks, Depends, FastAPI
from fastapi.responses import StreamingResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbrouter import (
    DatabaseRouter,
    RouterClosedError,
    RouterSettings,
    SessionClosedError,
    get_db,
)
from dbrouter.lifecycle import State
from tests.conftest import serve, server_connections

SELECT_ONE = text("SELECT 1")


def state_of(router: DatabaseRouter) -> State:
    return router.state


def kept_session_app(router: DatabaseRouter, kept: list[AsyncSession]) -> FastAPI:
    app = FastAPI(lifespan=router.lifespan)

    @app.get("/keep")
    async def keep(db: Annotated[AsyncSession, Depends(get_db())]) -> int:
        kept.append(db)  # stored past the request: the misuse under test
        return int(await db.scalar(SELECT_ONE) or 0)

    @app.get("/keep-committed")
    async def keep_committed(db: Annotated[AsyncSession, Depends(get_db(commit=True))]) -> int:
        kept.append(db)
        return int(await db.scalar(SELECT_ONE) or 0)

    return app


async def test_a_session_kept_past_its_request_opens_no_connection(pg_url: str) -> None:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": pg_url}}))
    kept: list[AsyncSession] = []
    async with serve(kept_session_app(router, kept)) as client:
        assert (await client.get("/keep")).json() == 1
        assert (await client.get("/keep-committed")).json() == 1
        before = await server_connections(pg_url)
        for session in kept:
            with pytest.raises(SessionClosedError, match="has ended"):
                await session.execute(SELECT_ONE)
            with pytest.raises(SessionClosedError):
                await session.connection()
        assert router.engine().pool.checkedout() == 0  # type: ignore[attr-defined]
        assert await server_connections(pg_url) == before
    # After shutdown: still refused, and nothing of the router is connected any more.
    for session in kept:
        with pytest.raises(SessionClosedError):
            await session.execute(SELECT_ONE)
    assert await server_connections(pg_url) == 0


async def test_after_dispose_no_engine_opens_a_connection(pg_url: str) -> None:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": pg_url}}))
    engine = router.engine()  # a reference kept from before shutdown
    async with router.session() as session:
        await session.execute(SELECT_ONE)
    await router.dispose()
    assert router.state is State.CLOSED
    with pytest.raises(RouterClosedError):
        router.engine()
    with pytest.raises(RouterClosedError):
        router.session()
    with pytest.raises(RouterClosedError, match="disposed"):
        async with engine.connect() as connection:
            await connection.execute(SELECT_ONE)
    assert await server_connections(pg_url) == 0


async def test_a_session_outliving_the_router_opens_no_connection(pg_url: str) -> None:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": pg_url}}))
    async with router.session() as session:
        await session.execute(SELECT_ONE)
    kept = session
    await router.dispose()
    with pytest.raises(SessionClosedError):
        await kept.execute(SELECT_ONE)
    assert await server_connections(pg_url) == 0


async def test_nothing_is_lent_once_closing_begins(pg_url: str) -> None:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": pg_url}}))
    holding = asyncio.Event()
    release = asyncio.Event()

    async def long_session() -> None:
        async with router.session() as session:
            await session.execute(SELECT_ONE)
            holding.set()
            await release.wait()

    task = asyncio.create_task(long_session())
    await holding.wait()
    disposing = asyncio.create_task(router.dispose(timeout=5))
    await asyncio.sleep(0)
    assert router.state is State.CLOSING
    with pytest.raises(RouterClosedError):
        router.session()
    release.set()
    await asyncio.gather(task, disposing)
    assert state_of(router) is State.CLOSED
    assert await server_connections(pg_url) == 0


async def test_what_background_tasks_and_streaming_responses_may_do(pg_url: str) -> None:
    """As docs/fastapi.md states: a plain ``get_db()`` session lives until the response
    is sent and its background tasks have run; a ``commit=True`` session ends before the
    response starts, so neither may use it."""
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": pg_url}}))
    app = FastAPI(lifespan=router.lifespan)
    seen: dict[str, object] = {}

    async def use(label: str, db: AsyncSession) -> None:
        try:
            seen[label] = await db.scalar(SELECT_ONE)
        except SessionClosedError as exc:
            seen[label] = type(exc).__name__

    @app.get("/background")
    async def background(
        tasks: BackgroundTasks, db: Annotated[AsyncSession, Depends(get_db())]
    ) -> None:
        tasks.add_task(use, "background", db)

    @app.get("/background-committed")
    async def background_committed(
        tasks: BackgroundTasks, db: Annotated[AsyncSession, Depends(get_db(commit=True))]
    ) -> None:
        tasks.add_task(use, "background-committed", db)

    async def rows(label: str, db: AsyncSession) -> AsyncIterator[str]:
        await use(label, db)
        yield str(seen[label])

    @app.get("/stream")
    async def stream(db: Annotated[AsyncSession, Depends(get_db())]) -> StreamingResponse:
        return StreamingResponse(rows("stream", db))

    @app.get("/stream-committed")
    async def stream_committed(
        db: Annotated[AsyncSession, Depends(get_db(commit=True))],
    ) -> StreamingResponse:
        return StreamingResponse(rows("stream-committed", db))

    async with serve(app) as client:
        for path in ("/background", "/background-committed", "/stream", "/stream-committed"):
            assert (await client.get(path)).status_code == 200
        assert router.engine().pool.checkedout() == 0  # type: ignore[attr-defined]
    assert seen == {
        "background": 1,
        "background-committed": "SessionClosedError",
        "stream": 1,
        "stream-committed": "SessionClosedError",
    }
    assert await server_connections(pg_url) == 0


async def test_health_after_dispose_is_unavailable_and_tenancy_says_closed() -> None:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": "sqlite://"}}))
    app = FastAPI()
    app.include_router(router.health_router())
    await router.dispose()
    async with serve(app) as client:
        response = await client.get("/health/databases")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    with pytest.raises(RouterClosedError):
        router.tenancy  # noqa: B018 - the property raises
