"""Tenant figures on real tenant databases: engines built, cached and evicted, lookups by
result, and the series of an evicted tenant gone, so labels stay within max_engines."""

# No ``from __future__ import annotations``: FastAPI resolves the endpoint annotations.

from typing import Annotated

import httpx
from fastapi import Depends, FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbrouter import DatabaseRouter, RouterSettings, get_tenant_db
from tests.conftest import serve
from tests.support.tenants import tenant_databases

Tenant = Annotated[AsyncSession, Depends(get_tenant_db())]


def tenant_labels(body: str) -> set[str]:
    """Every label value of the text that names a tenant."""
    return {
        value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        for value in sample.labels.values()
        if value.startswith("tenant:")
    }


async def get(client: httpx.AsyncClient, tenant: str) -> int:
    return (await client.get("/notes", headers={"X-Tenant-ID": tenant})).status_code


async def test_evicted_tenants_take_their_series_with_them(
    pg_url: str, postgres_admin_url: str
) -> None:
    async with tenant_databases(postgres_admin_url, ["t1", "t2", "t3"]) as tenants:
        router = DatabaseRouter(
            RouterSettings(
                databases={"primary": {"url": pg_url}},
                tenancy={
                    "url_template": tenants.url_template,
                    "max_engines": 2,
                    "pool_size": 1,
                    "max_overflow": 0,
                    "pool_timeout": 0.3,
                },
            )
        )
        app = FastAPI(lifespan=router.lifespan)
        app.include_router(router.metrics_router())

        @app.get("/notes")
        async def notes(db: Tenant) -> int:
            return int(await db.scalar(text("SELECT count(*) FROM notes")) or 0)

        async with serve(app) as client:
            assert [await get(client, tenant) for tenant in ("t1", "t2")] == [200, 200]
            assert await get(client, "nope") == 404
            # t1's only connection is taken: a request for it waits, then gets 503.
            async with router.tenant_session("t1") as held:
                await held.execute(text("SELECT 1"))
                assert await get(client, "t1") == 503
            body = (await client.get("/metrics")).text
            assert tenant_labels(body) == {"tenant:t1", "tenant:t2"}
            assert router.metrics().unavailable == {"tenant:t1": {"pool exhausted": 1}}

            assert await get(client, "t2") == 200
            assert await get(client, "t3") == 200  # t1 is the least recently used: evicted
            body = (await client.get("/metrics")).text
            snapshot = router.metrics()
        assert tenant_labels(body) == {"tenant:t2", "tenant:t3"}
        assert sorted(snapshot.pools) == ["primary", "tenant:t2", "tenant:t3"]
        assert snapshot.unavailable == {}
        tenants_now = snapshot.tenants
        assert tenants_now is not None
        # Built: t1, t2, t3, and one for "nope", disposed when its database was not found.
        assert (tenants_now.engines, tenants_now.built, tenants_now.evicted) == (2, 4, 1)
        assert tenants_now.lookups == {"found": 3, "unknown": 1}
