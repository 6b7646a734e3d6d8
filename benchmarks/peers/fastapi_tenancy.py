"""fastapi-tenancy, schema isolation, as its quick start sets it up: ``TenancyConfig``,
``SQLAlchemyTenantStore``, ``TenancyManager``, ``TenancyMiddleware`` and
``make_tenant_db_dependency(manager)``, the tenant read from ``X-Tenant-ID``.

Its in-process tenant cache (``l1_cache_enabled``) is on, so that a request does not look
its tenant up in the tenant store: the configuration its documentation gives a
single-process deployment. Its dependency does not commit, so the write endpoint commits
itself. The tenant ``acme`` is registered on the first start; its schema, ``tenant_acme``,
is the one the dbrouter schema stack reads."""

import contextlib
import importlib
from collections.abc import AsyncIterator
from typing import Annotated, Any

from bench_get_db import HIT_ITEM, SELECT_ITEM, asyncpg_url
from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession
from stacks import TENANT


def build(url: str) -> FastAPI:
    tenancy: Any = importlib.import_module("fastapi_tenancy")
    store_module: Any = importlib.import_module("fastapi_tenancy.storage.database")
    middleware: Any = importlib.import_module("fastapi_tenancy.middleware.tenancy")
    dependencies: Any = importlib.import_module("fastapi_tenancy.dependencies")
    errors: Any = importlib.import_module("fastapi_tenancy.core.exceptions")

    config = tenancy.TenancyConfig(
        database_url=asyncpg_url(url).render_as_string(hide_password=False),
        resolution_strategy="header",
        isolation_strategy="schema",
        l1_cache_enabled=True,
    )
    store = store_module.SQLAlchemyTenantStore(config.database_url)
    manager = tenancy.TenancyManager(config, store)
    manager_lifespan = manager.create_lifespan()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with manager_lifespan(app):
            try:
                await store.get_by_identifier(TENANT)
            except errors.TenantNotFoundError:
                await manager.register_tenant(identifier=TENANT, name="Acme")
            yield

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(middleware.TenancyMiddleware, manager=manager)
    Session = Annotated[AsyncSession, Depends(dependencies.make_tenant_db_dependency(manager))]

    @app.get("/items/{item_id}")
    async def read_item(item_id: int, session: Session) -> dict[str, Any]:
        row = (await session.execute(SELECT_ITEM, {"id": item_id})).one()
        return {"id": row.id, "name": row.name}

    @app.post("/items/{item_id}/hits")
    async def hit_item(item_id: int, session: Session) -> dict[str, Any]:
        await session.execute(HIT_ITEM, {"id": item_id})
        await session.commit()
        return {"id": item_id}

    return app
