"""`get_db` in a real FastAPI app on real PostgreSQL: routing, transactions, overrides,
startup checks and the HTTP answers to outages."""

# No ``from __future__ import annotations``: FastAPI resolves the annotations of the
# endpoints and dependencies defined inside the tests at runtime.

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict
from sqlalchemy import String, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from dbrouter import ConfigurationError, DatabaseRouter, RouterSettings, get_db
from dbrouter.models import Base, TimestampMixin
from tests.conftest import serve, server_connections

Primary = Annotated[AsyncSession, Depends(get_db("primary"))]
Reports = Annotated[AsyncSession, Depends(get_db("reports"))]
Committed = Annotated[AsyncSession, Depends(get_db("primary", commit=True))]


class Widget(TimestampMixin, Base):
    __tablename__ = "widgets"

    id: Mapped[int] = mapped_column(primary_key=True, init=False)
    name: Mapped[str] = mapped_column(String(50))


class WidgetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str


def build_app(router: DatabaseRouter) -> FastAPI:
    app = FastAPI(lifespan=router.lifespan)

    @app.get("/where")
    async def where(primary: Primary, reports: Reports) -> dict[str, str]:
        first = await primary.scalar(text("SELECT current_database()"))
        second = await reports.scalar(text("SELECT current_database()"))
        return {"primary": str(first), "reports": str(second)}

    @app.post("/widgets", response_model=WidgetOut)
    async def create(name: str, db: Committed) -> Widget:
        widget = Widget(name=name)
        db.add(widget)
        await db.flush()
        return widget

    @app.post("/widgets/committed-here", response_model=WidgetOut)
    async def create_and_commit(name: str, db: Primary) -> Widget:
        widget = Widget(name=name)
        db.add(widget)
        await db.commit()
        # Read after the commit, outside any transaction: an expired object would need a
        # lazy load here, which raises MissingGreenlet under asyncio.
        assert widget.name == name
        return widget

    @app.post("/widgets/fail")
    async def create_then_fail(name: str, db: Committed) -> None:
        db.add(Widget(name=name))
        await db.flush()
        raise HTTPException(status_code=409, detail="changed my mind")

    @app.post("/widgets/crash")
    async def create_then_crash(name: str, db: Primary) -> None:
        db.add(Widget(name=name))
        await db.flush()
        raise RuntimeError("endpoint bug")

    @app.post("/widgets/uncommitted")
    async def create_without_commit(name: str, db: Primary) -> dict[str, str]:
        db.add(Widget(name=name))
        await db.flush()
        return {"status": "flushed"}

    @app.get("/widgets")
    async def names(db: Primary) -> list[str]:
        return list((await db.scalars(select(Widget.name).order_by(Widget.id))).all())

    @app.post("/deferred")
    async def deferred_violation(db: Committed) -> dict[str, str]:
        await db.execute(text("INSERT INTO child (parent_id) VALUES (999)"))
        return {"status": "ok"}

    @app.get("/sleep")
    async def sleep(db: Primary, seconds: float) -> dict[str, str]:
        await db.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
        return {"status": "slept"}

    return app


async def prepare(url: str) -> None:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": url}}))
    async with router.engine().begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
        await connection.execute(text("CREATE TABLE parent (id int PRIMARY KEY)"))
        await connection.execute(
            text(
                "CREATE TABLE child (parent_id int REFERENCES parent (id) "
                "DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    await router.dispose()


@pytest.fixture
async def router(pg_url: str, pg_url_2: str) -> AsyncIterator[DatabaseRouter]:
    await prepare(pg_url)
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": pg_url, "pool_size": 2, "max_overflow": 0, "pool_timeout": 1},
                "reports": {"url": pg_url_2},
            }
        )
    )
    yield router
    await router.dispose()


@pytest.fixture
async def client(router: DatabaseRouter) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(build_app(router)) as client:
        yield client


async def test_each_dependency_gets_its_database(
    client: httpx.AsyncClient, pg_url: str, pg_url_2: str
) -> None:
    response = await client.get("/where")
    assert response.status_code == 200
    assert response.json() == {
        "primary": make_url(pg_url).database,
        "reports": make_url(pg_url_2).database,
    }


async def test_orm_objects_stay_readable_after_commit(client: httpx.AsyncClient) -> None:
    response = await client.post("/widgets", params={"name": "gear"})
    assert response.status_code == 200
    assert response.json()["name"] == "gear"
    response = await client.post("/widgets/committed-here", params={"name": "cog"})
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "cog"
    assert (await client.get("/widgets")).json() == ["gear", "cog"]


async def test_rows_are_absent_after_the_endpoint_raised(client: httpx.AsyncClient) -> None:
    assert (await client.post("/widgets/fail", params={"name": "a"})).status_code == 409
    assert (await client.post("/widgets/crash", params={"name": "b"})).status_code == 500
    assert (await client.post("/widgets/uncommitted", params={"name": "c"})).status_code == 200
    assert (await client.get("/widgets")).json() == []


async def test_a_commit_that_fails_is_never_a_200(client: httpx.AsyncClient) -> None:
    # The foreign key is deferred: the INSERT succeeds, the COMMIT fails.
    response = await client.post("/deferred")
    assert response.status_code == 500
    assert (await client.post("/widgets", params={"name": "after"})).status_code == 200


async def test_commit_happens_before_the_response_is_sent(
    router: DatabaseRouter, pg_url: str
) -> None:
    app = build_app(router)
    async with serve(app) as client:
        response = await client.post("/widgets", params={"name": "visible"})
        assert response.status_code == 200
        # The response is complete: another connection must already see the row.
        other = DatabaseRouter(RouterSettings(databases={"primary": {"url": pg_url}}))
        async with other.session() as session:
            names = (await session.scalars(select(Widget.name))).all()
        await other.dispose()
    assert names == ["visible"]


async def test_get_db_is_memoized_so_overrides_work(router: DatabaseRouter) -> None:
    assert get_db("reports") is get_db("reports")
    assert get_db("reports") is get_db(name="reports")
    assert get_db() is get_db(None, commit=False)
    assert get_db("reports") is not get_db("reports", commit=True)

    class FakeSession:
        async def scalar(self, statement: object) -> str:
            return "overridden"

    app = build_app(router)
    app.dependency_overrides[get_db("reports")] = FakeSession
    async with serve(app) as client:
        body = (await client.get("/where")).json()
    assert body["reports"] == "overridden"


async def test_an_unknown_name_stops_startup(router: DatabaseRouter) -> None:
    app = build_app(router)

    @app.get("/nope")
    async def nope(db: Annotated[AsyncSession, Depends(get_db("nope"))]) -> None:
        return None

    with pytest.raises(ConfigurationError) as caught:
        async with serve(app):
            pass
    message = str(caught.value)
    assert "get_db('nope')" in message
    assert "'primary', 'reports'" in message


async def test_an_unknown_name_in_a_nested_dependency_stops_startup(
    router: DatabaseRouter,
) -> None:
    async def repository(db: Annotated[AsyncSession, Depends(get_db("archive"))]) -> str:
        return "repo"

    app = build_app(router)

    @app.get("/nested")
    async def nested(repo: Annotated[str, Depends(repository)]) -> str:
        return repo

    with pytest.raises(ConfigurationError, match="get_db\\('archive'\\)"):
        async with serve(app):
            pass


async def test_an_overridden_unknown_name_does_not_stop_startup(router: DatabaseRouter) -> None:
    app = build_app(router)

    @app.get("/other")
    async def other(db: Annotated[AsyncSession, Depends(get_db("other"))]) -> str:
        return str(db)

    app.dependency_overrides[get_db("other")] = lambda: "stub"
    async with serve(app) as client:
        assert (await client.get("/other")).json() == "stub"


async def test_a_down_database_is_a_503_within_the_connect_timeout(pg_url: str) -> None:
    await prepare(pg_url)
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": pg_url},
                # Nothing listens on port 1: connecting is refused at once.
                "reports": {"url": "postgresql://app:pw@127.0.0.1:1/x", "connect_timeout": 1},
            }
        )
    )
    app = build_app(router)
    async with serve(app) as client:
        started = time.monotonic()
        response = await client.get("/where")
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert response.headers["Retry-After"].isdigit()
        assert response.json() == {"detail": "database unavailable, try again later"}
        assert elapsed < 5
        # The other database keeps serving.
        assert (await client.get("/widgets")).status_code == 200


async def test_an_unanswering_server_is_cut_off_by_connect_timeout(pg_url: str) -> None:
    # A socket that accepts TCP connections but never speaks the protocol.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": pg_url},
                "reports": {
                    "url": f"postgresql://app:pw@127.0.0.1:{port}/x",
                    "connect_timeout": 1,
                },
            }
        )
    )
    try:
        async with serve(build_app(router)) as client:
            started = time.monotonic()
            response = await client.get("/where")
            elapsed = time.monotonic() - started
    finally:
        server.close()
        await router.dispose()
    assert response.status_code == 503
    assert "Retry-After" in response.headers
    assert 0.9 < elapsed < 5


async def test_an_exhausted_pool_is_a_503(client: httpx.AsyncClient) -> None:
    # pool_size=2, max_overflow=0, pool_timeout=1: two sleepers hold the pool.
    sleepers = [asyncio.create_task(client.get("/sleep", params={"seconds": 3})) for _ in range(2)]
    await asyncio.sleep(0.5)
    started = time.monotonic()
    response = await client.get("/widgets")
    assert response.status_code == 503
    assert "Retry-After" in response.headers
    assert time.monotonic() - started < 2.5
    assert [task.status_code for task in await asyncio.gather(*sleepers)] == [200, 200]
    assert (await client.get("/widgets")).status_code == 200


async def test_no_connection_is_left_after_shutdown(router: DatabaseRouter, pg_url: str) -> None:
    async with serve(build_app(router)) as client:
        responses = await asyncio.gather(*(client.get("/widgets") for _ in range(10)))
        assert {response.status_code for response in responses} == {200}
        assert await server_connections(pg_url) >= 1
    assert await server_connections(pg_url) == 0
    assert router.closed


async def test_the_health_route(router: DatabaseRouter) -> None:
    app = build_app(router)
    app.include_router(router.health_router())
    async with serve(app) as client:
        response = await client.get("/health/databases")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["databases"]) == {"primary", "reports"}
    assert body["databases"]["primary"]["status"] == "up"


async def test_the_health_route_is_503_when_a_database_is_down(pg_url: str) -> None:
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": pg_url},
                "reports": {"url": "postgresql://app:pw@127.0.0.1:1/x", "connect_timeout": 1},
            }
        )
    )
    app = FastAPI(lifespan=router.lifespan)
    app.include_router(router.health_router())
    async with serve(app) as client:
        response = await client.get("/health/databases")
    assert response.status_code == 503
    body = response.json()
    assert body["databases"]["primary"]["status"] == "up"
    assert body["databases"]["reports"]["status"] == "down"
    assert body["databases"]["reports"]["error"]


async def test_a_router_without_lifespan_is_explained(router: DatabaseRouter) -> None:
    app = FastAPI()

    @app.get("/x")
    async def x(db: Primary) -> None:
        return None

    async with serve(app, raise_app_exceptions=True) as client:
        with pytest.raises(ConfigurationError, match=r"lifespan=router\.lifespan"):
            await client.get("/x")


async def test_a_lifespan_wrapped_by_the_application(router: DatabaseRouter) -> None:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with router.lifespan(app):
            yield  # the state is not passed on: the app's state still finds the router

    app = build_app(router)
    app.router.lifespan_context = lifespan
    async with serve(app) as client:
        assert (await client.get("/widgets")).status_code == 200


async def test_unknown_names_in_included_routers_stop_startup(router: DatabaseRouter) -> None:
    from fastapi import APIRouter

    inner = APIRouter()

    @inner.get("/inner")
    async def uses_archive(db: Annotated[AsyncSession, Depends(get_db("archive"))]) -> None:
        return None

    outer = APIRouter(prefix="/outer")
    outer.include_router(inner)
    app = build_app(router)
    app.include_router(outer)
    with pytest.raises(ConfigurationError, match=r"get_db\('archive'\)"):
        async with serve(app):
            pass

    guarded = build_app(router)
    guarded.include_router(APIRouter(), dependencies=[Depends(get_db("audit"))])
    with pytest.raises(ConfigurationError, match=r"get_db\('audit'\)"):
        async with serve(guarded):
            pass
