"""fastapi-async-sqlalchemy: ``SQLAlchemyMiddleware`` opens a session per request in a
context variable, endpoints use the global ``db.session`` (no dependency), and
``commit_on_exit=True`` commits when the endpoint returns. Its engine keeps SQLAlchemy's
defaults (no pre-ping) besides the pool size."""

import importlib
from typing import Any

from bench_get_db import HIT_ITEM, SELECT_ITEM, asyncpg_url
from fastapi import FastAPI
from stacks import POOL


def build(url: str) -> FastAPI:
    library: Any = importlib.import_module("fastapi_async_sqlalchemy")
    db = library.db
    app = FastAPI()
    app.add_middleware(
        library.SQLAlchemyMiddleware,
        db_url=asyncpg_url(url).render_as_string(hide_password=False),
        engine_args=dict(POOL),
        commit_on_exit=True,
    )

    @app.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, Any]:
        row = (await db.session.execute(SELECT_ITEM, {"id": item_id})).one()
        return {"id": row.id, "name": row.name}

    @app.post("/items/{item_id}/hits")
    async def hit_item(item_id: int) -> dict[str, Any]:
        await db.session.execute(HIT_ITEM, {"id": item_id})
        return {"id": item_id}

    return app
