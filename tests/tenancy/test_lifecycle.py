"""Tenants created and dropped at run time: the database or schema made or removed on the
server, and every lookup of the process told at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import asyncpg
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from dbrouter import (
    DatabaseRouter,
    DatabaseUnavailableError,
    RouterSettings,
    TenantError,
    TenantExistsError,
    TenantResolutionError,
    TenantSettings,
    UnknownTenantError,
    UnmanagedTenantError,
    get_tenant_db,
)
from tests.conftest import serve, server_connections


@asynccontextmanager
async def template_tenants(admin_url: str) -> AsyncIterator[str]:
    """A URL template naming databases no other test uses; whatever it made is dropped."""
    prefix = f"dbl{uuid.uuid4().hex[:8]}"
    base = make_url(admin_url)
    try:
        yield (
            base.set(database=f"{prefix}_TENANT")
            .render_as_string(hide_password=False)
            .replace("TENANT", "{tenant}")
        )
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            names = await admin.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1", f"{prefix}_%"
            )
            for row in names:
                await admin.execute(f'DROP DATABASE "{row["datname"]}" WITH (FORCE)')
        finally:
            await admin.close()


async def count(url: str, query: str, name: str) -> int:
    """``count(*)`` of *query* for *name*, on the database of *url*."""
    connection = await asyncpg.connect(url)
    try:
        return int(await connection.fetchval(query, name))
    finally:
        await connection.close()


async def databases_named(admin_url: str, name: str) -> int:
    return await count(admin_url, "SELECT count(*) FROM pg_database WHERE datname = $1", name)


async def schemas_named(url: str, name: str) -> int:
    return await count(url, "SELECT count(*) FROM pg_namespace WHERE nspname = $1", name)


def notes_app(router: DatabaseRouter) -> FastAPI:
    app = FastAPI(lifespan=router.lifespan)

    @app.get("/notes")
    async def notes(
        db: Annotated[AsyncSession, Depends(get_tenant_db(commit=True))],
    ) -> dict[str, int]:
        await db.execute(text("CREATE TABLE IF NOT EXISTS notes (id int)"))
        await db.execute(text("INSERT INTO notes VALUES (1)"))
        return {"rows": int(await db.scalar(text("SELECT count(*) FROM notes")) or 0)}

    return app


async def test_a_created_database_tenant_is_served_at_once_and_a_dropped_one_is_gone(
    postgres_admin_url: str, pg_url: str
) -> None:
    async with template_tenants(postgres_admin_url) as template:
        router = DatabaseRouter(
            RouterSettings(
                databases={"primary": {"url": pg_url}},
                tenancy={"url_template": template, "lookup_ttl": 3600},
            )
        )
        name = make_url(template.replace("{tenant}", "acme")).database or ""
        async with serve(notes_app(router)) as client:
            # Not there yet, and the answer is remembered for an hour...
            assert (await client.get("/notes", headers={"X-Tenant-ID": "acme"})).status_code == 404
            await router.create_tenant("acme")
            # ...yet the next request finds the new tenant.
            response = await client.get("/notes", headers={"X-Tenant-ID": "acme"})
            assert response.status_code == 200, response.text
            assert response.json() == {"rows": 1}
            assert await databases_named(postgres_admin_url, name) == 1
            assert await router.list_tenants() == ["acme"]
            assert "acme" in router.tenant_engines()

            await router.drop_tenant("acme")
            assert (await client.get("/notes", headers={"X-Tenant-ID": "acme"})).status_code == 404
            assert router.tenant_engines() == {}
            assert await databases_named(postgres_admin_url, name) == 0
            assert await router.list_tenants() == []


async def test_dropping_a_database_tenant_waits_for_its_sessions_and_closes_every_connection(
    postgres_admin_url: str, pg_url: str
) -> None:
    async with template_tenants(postgres_admin_url) as template:
        url = template.replace("{tenant}", "busy")
        async with DatabaseRouter(
            RouterSettings(
                databases={"primary": {"url": pg_url}}, tenancy={"url_template": template}
            )
        ) as router:
            await router.create_tenant("busy")
            # Another process keeps a connection to the tenant's database.
            other = await asyncpg.connect(url)
            finished = asyncio.Event()

            async def working() -> None:
                async with router.tenant_session("busy") as session:
                    await session.execute(text("SELECT 1"))
                    await asyncio.sleep(0.3)
                    await session.execute(text("SELECT 1"))  # still served: not cut off
                finished.set()

            task = asyncio.create_task(working())
            await asyncio.sleep(0.1)
            try:
                await router.drop_tenant("busy", timeout=5)
            finally:
                await task
                assert other.is_closed() or await _closed(other)
            assert finished.is_set()
            assert await server_connections(url.replace("{tenant}", "busy")) == 0
            name = make_url(url).database or ""
            assert await databases_named(postgres_admin_url, name) == 0


async def _closed(connection: asyncpg.Connection) -> bool:
    try:
        await connection.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError, OSError):
        return True
    finally:
        connection.terminate()
    return False


async def test_a_created_schema_tenant_is_served_at_once_and_a_dropped_one_is_gone(
    pg_url: str,
) -> None:
    router = DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": pg_url}},
            tenancy={"strategy": "schema", "schema_template": "org_{tenant}", "lookup_ttl": 3600},
        )
    )
    async with serve(notes_app(router)) as client:
        assert (await client.get("/notes", headers={"X-Tenant-ID": "acme"})).status_code == 404
        await router.create_tenant("acme")
        response = await client.get("/notes", headers={"X-Tenant-ID": "acme"})
        assert response.status_code == 200, response.text
        assert await schemas_named(pg_url, "org_acme") == 1
        assert await router.list_tenants() == ["acme"]

        await router.drop_tenant("acme")
        assert (await client.get("/notes", headers={"X-Tenant-ID": "acme"})).status_code == 404
        assert await schemas_named(pg_url, "org_acme") == 0
    # Nothing was created outside the tenant's schema.
    connection = await asyncpg.connect(pg_url)
    try:
        assert await connection.fetchval("SELECT to_regclass('public.notes')") is None
    finally:
        await connection.close()


async def test_creating_an_existing_tenant_or_dropping_a_missing_one_is_refused(
    postgres_admin_url: str, pg_url: str
) -> None:
    async with (
        template_tenants(postgres_admin_url) as template,
        DatabaseRouter(
            RouterSettings(
                databases={"primary": {"url": pg_url}}, tenancy={"url_template": template}
            )
        ) as router,
    ):
        await router.create_tenant("acme")
        with pytest.raises(TenantExistsError, match="'acme' exists already") as created:
            await router.create_tenant("acme")
        assert created.value.tenant == "acme"
        with pytest.raises(UnknownTenantError):
            await router.drop_tenant("nobody")
        # The failed calls changed nothing.
        assert await router.list_tenants() == ["acme"]
        async with router.tenant_session("acme") as session:
            assert await session.scalar(text("SELECT 1")) == 1
    async with DatabaseRouter(
        RouterSettings(databases={"primary": {"url": pg_url}}, tenancy={"strategy": "schema"})
    ) as router:
        await router.create_tenant("acme")
        with pytest.raises(TenantExistsError, match="schema 'tenant_acme'"):
            await router.create_tenant("acme")
        with pytest.raises(UnknownTenantError):
            await router.drop_tenant("nobody")
        assert await router.list_tenants() == ["acme"]


@pytest.mark.parametrize("tenant", ["", "Acme", "a/b", "x" * 200, "public", "pg_catalog", "a b"])
async def test_a_bad_tenant_id_is_refused_before_any_io(tenant: str) -> None:
    # Nothing listens on port 1: any I/O would be a connection error instead.
    async with DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": "postgresql://u:secret@127.0.0.1:1/db"}},
            tenancy={"url_template": "postgresql://u:secret@127.0.0.1:1/t_{tenant}"},
        )
    ) as router:
        with pytest.raises(TenantResolutionError):
            await router.create_tenant(tenant)
        with pytest.raises(TenantResolutionError):
            await router.drop_tenant(tenant)


class Catalog:
    async def __call__(self, tenant: str) -> TenantSettings | None:
        return TenantSettings() if tenant == "listed" else None


async def test_tenants_whose_storage_is_not_derived_are_refused(pg_url: str) -> None:
    async with DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": pg_url}},
            tenancy={
                "url_template": pg_url.rsplit("/", 1)[0] + "/t_{tenant}",
                "tenants": {"own": {"url": pg_url}},
            },
        )
    ) as router:
        for call in (router.create_tenant, router.drop_tenant):
            with pytest.raises(UnmanagedTenantError, match=r"tenancy\.tenants\.own\.url"):
                await call("own")
        # Still served: nothing was forgotten.
        async with router.tenant_session("own") as session:
            assert await session.scalar(text("SELECT 1")) == 1
    async with DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": pg_url}},
            tenancy={"url_template": pg_url.rsplit("/", 1)[0] + "/t_{tenant}"},
        ),
        tenant_catalog=Catalog(),
    ) as router:
        with pytest.raises(UnmanagedTenantError, match="catalog"):
            await router.create_tenant("listed")
    async with DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": pg_url}},
            tenancy={"tenants": {"own": {"url": pg_url}}},
        )
    ) as router:
        with pytest.raises(UnmanagedTenantError, match=r"url_template.*none is set"):
            await router.create_tenant("new")


async def test_a_role_that_may_not_create_databases_gets_a_clear_error(
    postgres_admin_url: str, pg_url: str
) -> None:
    role = f"nocreate_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'p@ss:/%word'")
        template = (
            make_url(postgres_admin_url)
            .set(username=role, password="p@ss:/%word", database="t_{tenant}")
            .render_as_string(hide_password=False)
        )
        async with DatabaseRouter(
            RouterSettings(
                databases={"primary": {"url": pg_url}}, tenancy={"url_template": template}
            )
        ) as router:
            with pytest.raises(TenantError, match="permission denied") as refused:
                await router.create_tenant("acme")
            assert "p@ss" not in str(refused.value)
    finally:
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()


async def test_a_server_that_is_down_is_unavailable() -> None:
    async with DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": "sqlite://"}},
            tenancy={
                "url_template": "postgresql://u:secret@127.0.0.1:1/t_{tenant}",
                "connect_timeout": 2,
            },
        )
    ) as router:
        with pytest.raises(DatabaseUnavailableError) as down:
            await router.create_tenant("acme")
        assert "secret" not in str(down.value)
    async with DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": "postgresql://u:secret@127.0.0.1:1/db"}},
            tenancy={"strategy": "schema"},
        )
    ) as router:
        for call in (router.create_tenant, router.drop_tenant):
            with pytest.raises(DatabaseUnavailableError) as down:
                await call("acme")
            assert "secret" not in str(down.value)
