"""advanced-alchemy's FastAPI extension: ``AdvancedAlchemy(config=..., app=app)`` and
``Depends(alchemy.provide_session())``, with ``commit_mode="autocommit"`` so that its
middleware commits every 2xx answer, as its FastAPI example does. It commits once the
response has been sent."""

import importlib
from typing import Any

from bench_get_db import add_item_routes, asyncpg_url
from fastapi import Depends, FastAPI
from stacks import POOL


def build(url: str) -> FastAPI:
    extension: Any = importlib.import_module("advanced_alchemy.extensions.fastapi")
    config = extension.SQLAlchemyAsyncConfig(
        connection_string=asyncpg_url(url).render_as_string(hide_password=False),
        session_config=extension.AsyncSessionConfig(expire_on_commit=False),
        engine_config=extension.EngineConfig(**POOL),
        commit_mode="autocommit",
    )
    app = FastAPI()
    alchemy = extension.AdvancedAlchemy(config=config, app=app)
    session = Depends(alchemy.provide_session())
    add_item_routes(app, reader=session, writer=session)
    return app
