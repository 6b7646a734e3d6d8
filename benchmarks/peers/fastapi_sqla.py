"""fastapi-sqla: configured by ``sqlalchemy_*`` environment variables (read whatever
their case), ``startup()`` in the lifespan and ``setup_middlewares(app)``; its middleware
commits every answer below 400 before the response is sent. The session comes from
``AsyncSessionDependency()``."""

import contextlib
import importlib
import os
from collections.abc import AsyncIterator
from typing import Any

from bench_get_db import add_item_routes, asyncpg_url
from fastapi import Depends, FastAPI
from stacks import POOL


def build(url: str) -> FastAPI:
    os.environ["SQLALCHEMY_URL"] = asyncpg_url(url).render_as_string(hide_password=False)
    for key, value in POOL.items():
        os.environ[f"SQLALCHEMY_{key.upper()}"] = str(value)
    sqla: Any = importlib.import_module("fastapi_sqla")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await sqla.startup()
        yield

    app = FastAPI(lifespan=lifespan)
    sqla.setup_middlewares(app)
    session = Depends(sqla.AsyncSessionDependency())
    add_item_routes(app, reader=session, writer=session)
    return app
