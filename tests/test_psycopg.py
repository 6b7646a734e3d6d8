"""PostgreSQL through psycopg 3, the other async driver a URL may name
(``postgresql+psycopg://``): sessions, timeouts, read-only replica sessions and tokens."""

# No ``from __future__ import annotations``: FastAPI resolves the endpoint annotations.

import asyncio
import contextlib
import time
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from dbrouter import (
    DatabaseRouter,
    DatabaseUnavailableError,
    RouterSettings,
    UnknownTenantError,
    get_db,
)
from dbrouter.replicas.consistency import TOKEN_HEADER, parse_token
from tests.conftest import serve
from tests.support.tenants import tenant_databases, tenant_schemas


def psycopg(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


async def unavailable_within(router: DatabaseRouter, seconds: float) -> None:
    """A session on *router*'s default database fails as unavailable within *seconds*."""
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError):
        async with router.session() as session:
            await session.execute(text("SELECT 1"))
    assert time.monotonic() - started < seconds


async def test_sessions_through_psycopg(pg_url: str) -> None:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": psycopg(pg_url)}}))
    async with router:
        assert router.engine().url.drivername == "postgresql+psycopg"
        async with router.session() as session:
            assert await session.scalar(text("SELECT current_database()")) == (
                make_url(pg_url).database
            )
            name = await session.scalar(text("SELECT current_setting('application_name')"))
            assert name == "dbrouter:primary"


async def test_a_dead_host_through_psycopg_is_unavailable_in_time() -> None:
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {
                    "url": "postgresql+psycopg://app:pw@127.0.0.1:1/app",
                    "connect_timeout": 1,
                }
            }
        )
    )
    async with router:
        await unavailable_within(router, 5)


async def test_replica_sessions_and_tokens_through_psycopg(pg_url: str) -> None:
    url = psycopg(pg_url)
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": url},
                # Not a standby: reads fall back to the primary, read-only all the same.
                "replica": {"url": url, "replica_of": "primary"},
            }
        )
    )
    app = FastAPI(lifespan=router.lifespan)

    @app.post("/write")
    async def write(db: Annotated[AsyncSession, Depends(get_db(commit=True))]) -> str:
        await db.execute(text("CREATE TABLE IF NOT EXISTS items (id int)"))
        return "ok"

    @app.get("/read-only")
    async def read_only(db: Annotated[AsyncSession, Depends(get_db("replica"))]) -> str:
        return str(await db.scalar(text("SHOW transaction_read_only")))

    @app.post("/replica-write")
    async def replica_write(db: Annotated[AsyncSession, Depends(get_db("replica"))]) -> str:
        await db.execute(text("CREATE TABLE written (id int)"))
        await db.commit()
        return "wrote"

    async with serve(app) as client:
        written = await client.post("/write")
        assert written.status_code == 200
        assert set(parse_token(written.headers[TOKEN_HEADER])) == {"primary"}
        assert (await client.get("/read-only")).json() == "on"
        assert (await client.post("/replica-write")).status_code == 500


async def test_a_silent_host_through_psycopg_times_out() -> None:
    done = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await done.wait()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {
                    "url": f"postgresql+psycopg://app:pw@127.0.0.1:{port}/app",
                    "connect_timeout": 1,
                }
            }
        )
    )
    try:
        async with router:
            await unavailable_within(router, 8)
    finally:
        done.set()
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        server.close()
        await server.wait_closed()


async def test_schema_tenants_through_psycopg_leave_no_temporary_tables(pg_url: str) -> None:
    await tenant_schemas(pg_url, ["alpha", "beta"])
    router = DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": psycopg(pg_url), "pool_size": 1, "max_overflow": 0}},
            tenancy={"strategy": "schema"},
        )
    )
    async with router:
        async with router.tenant_session("alpha", commit=True) as session:
            await session.execute(text("CREATE TEMP TABLE notes AS SELECT * FROM notes"))
        async with router.tenant_session("alpha") as session:
            await session.execute(text("CREATE TEMP TABLE stash (x int)"))  # rolled back
        async with router.tenant_session("beta") as session:
            owners = (await session.execute(text("SELECT owner FROM notes"))).scalars()
            assert list(owners) == ["beta"]


async def test_template_tenants_through_psycopg(postgres_admin_url: str, pg_url: str) -> None:
    async with tenant_databases(postgres_admin_url, ["acme"]) as databases:
        router = DatabaseRouter(
            RouterSettings(
                databases={"primary": {"url": psycopg(pg_url)}},
                tenancy={
                    "url_template": "postgresql+psycopg://"
                    + databases.url_template.split("://", 1)[1]
                },
            )
        )
        async with router:
            async with router.tenant_session("acme") as session:
                assert await session.scalar(text("SELECT owner FROM notes")) == "acme"
            # A database that does not exist is an unknown tenant, not an outage.
            with pytest.raises(UnknownTenantError):
                async with router.tenant_session("nosuchtenant"):
                    pass
