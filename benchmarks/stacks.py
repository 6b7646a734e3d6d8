"""The stacks under comparison: one FastAPI app each, serving the same two endpoints.

- ``GET /items/{id}`` reads one row (``SELECT id, name FROM items WHERE id = :id``);
- ``POST /items/{id}/hits`` updates one row (``UPDATE items SET hits = hits + 1 ...``) and
  commits it.

Every stack gets the same pool size as the hand-written dependency (20 + 10 overflow)
where it lets its pool be sized; everything else is the stack's own default. Stacks of
this module need only the project's own environment; the peers (``peers/``) each need a
library of their own and are loaded from their environment by name.
"""

import contextlib
import importlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from bench_get_db import add_item_routes, asyncpg_url, dbrouter_app, hand_written_app
from fastapi import Depends, FastAPI, Request

from dbrouter import DatabaseRouter, RouterSettings, get_tenant_db

__all__ = [
    "POOL",
    "STACKS",
    "TENANT",
    "TENANT_SCHEMA",
    "Stack",
    "find",
]

POOL = {"pool_size": 20, "max_overflow": 10}
"""The pool every stack is given, where it can be sized: the hand-written one's."""
TENANT = "acme"
"""The tenant of the tenant stacks: its data is the database's own ``items`` (database
strategy) or the schema ``TENANT_SCHEMA`` (schema strategy)."""
TENANT_SCHEMA = f"tenant_{TENANT}"

if TYPE_CHECKING:
    PooledConnection = PoolConnectionProxy[asyncpg.Record]
else:  # not subscriptable at run time, where FastAPI reads the annotations
    PooledConnection = PoolConnectionProxy


@dataclass(frozen=True)
class Stack:
    """One way of serving the endpoints."""

    name: str
    """Short name, used on the command line and in the JSON results."""
    label: str
    """What the report calls it."""
    build: Callable[[str], FastAPI]
    """Builds the app from a ``postgresql://`` URL; its lifespan opens and closes it."""
    tenant: bool = False
    """Requests carry ``X-Tenant-ID: acme``."""
    schema: str = "public"
    """Where its ``items`` table is: where its commits can be counted."""

    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]:
        """Headers every request of this stack sends."""
        return [(b"x-tenant-id", TENANT.encode())] if self.tenant else []


def hand_written(url: str) -> FastAPI:
    return hand_written_app(asyncpg_url(url))


def hand_written_without_ping(url: str) -> FastAPI:
    return hand_written_app(asyncpg_url(url), pool_pre_ping=False)


def get_db_app(url: str) -> FastAPI:
    return dbrouter_app(asyncpg_url(url))


def tenant_database_app(url: str) -> FastAPI:
    """``get_tenant_db()``, database strategy: the tenant's database is this one."""
    router = DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": url}},
            tenancy={"tenants": {TENANT: {"url": url, **POOL}}},
        )
    )
    app = FastAPI(lifespan=router.lifespan)
    add_item_routes(
        app, reader=Depends(get_tenant_db()), writer=Depends(get_tenant_db(commit=True))
    )
    return app


def tenant_schema_app(url: str) -> FastAPI:
    """``get_tenant_db()``, schema strategy: the tenant is found by its schema."""
    router = DatabaseRouter(
        RouterSettings(databases={"primary": {"url": url}}, tenancy={"strategy": "schema"})
    )
    app = FastAPI(lifespan=router.lifespan)
    add_item_routes(
        app, reader=Depends(get_tenant_db()), writer=Depends(get_tenant_db(commit=True))
    )
    return app


def raw_asyncpg_app(url: str) -> FastAPI:
    """FastAPI and an asyncpg pool, no ORM session: the floor of what a request can cost."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with asyncpg.create_pool(
            url, max_size=POOL["pool_size"] + POOL["max_overflow"]
        ) as pool:
            yield {"pool": pool}

    async def connection(request: Request) -> AsyncIterator[PooledConnection]:
        pool: asyncpg.Pool = request.state.pool
        async with pool.acquire() as acquired:
            yield acquired

    Connection = Annotated[PooledConnection, Depends(connection)]
    app = FastAPI(lifespan=lifespan)

    @app.get("/items/{item_id}")
    async def read_item(item_id: int, db: Connection) -> dict[str, Any]:
        row = await db.fetchrow("SELECT id, name FROM items WHERE id = $1", item_id)
        assert row is not None
        return {"id": row["id"], "name": row["name"]}

    @app.post("/items/{item_id}/hits")
    async def hit_item(item_id: int, db: Connection) -> dict[str, Any]:
        await db.execute("UPDATE items SET hits = hits + 1 WHERE id = $1", item_id)
        return {"id": item_id}

    return app


def peer(module: str) -> Callable[[str], FastAPI]:
    """The ``build`` of ``peers/<module>.py``, imported when called: only the peer's own
    environment has its library."""

    def build(url: str) -> FastAPI:
        built: Callable[[str], FastAPI] = importlib.import_module(f"peers.{module}").build
        return built(url)

    return build


STACKS = {
    stack.name: stack
    for stack in (
        Stack("hand-written", "hand-written dependency", hand_written),
        Stack("get_db", "dbrouter get_db", get_db_app),
        Stack("no-pre-ping", "hand-written, pool_pre_ping off", hand_written_without_ping),
        Stack("asyncpg", "raw asyncpg pool, no ORM", raw_asyncpg_app),
        Stack("tenant-database", "dbrouter get_tenant_db, database", tenant_database_app, True),
        Stack(
            "tenant-schema",
            "dbrouter get_tenant_db, schema",
            tenant_schema_app,
            True,
            TENANT_SCHEMA,
        ),
        Stack("advanced-alchemy", "advanced-alchemy provide_session", peer("advanced_alchemy")),
        Stack("fastapi-sqla", "fastapi-sqla", peer("fastapi_sqla")),
        Stack(
            "fastapi-async-sqlalchemy",
            "fastapi-async-sqlalchemy",
            peer("fastapi_async_sqlalchemy"),
        ),
        Stack(
            "fastapi-tenancy",
            "fastapi-tenancy, schema",
            peer("fastapi_tenancy"),
            True,
            TENANT_SCHEMA,
        ),
    )
}
"""Every stack, by name."""


def find(name: str) -> Stack:
    """The stack called *name*; a clear error listing the others."""
    try:
        return STACKS[name]
    except KeyError:
        raise SystemExit(f"unknown stack {name!r}; choose from {', '.join(STACKS)}") from None
