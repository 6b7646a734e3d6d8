"""Listing tenants, part of the tenancy strategy and catalog protocol: declared tenants,
the catalog's own list, or the databases and schemas the templates name on the server."""

from __future__ import annotations

import asyncpg
import pytest

from dbrouter import ConfigurationError, DatabaseRouter, RouterSettings, TenantSettings
from tests.support.tenants import tenant_databases, tenant_schemas


async def test_template_tenants_are_the_databases_the_template_names(
    postgres_admin_url: str, pg_url: str
) -> None:
    async with tenant_databases(postgres_admin_url, ["acme", "globex", "initech"]) as made:
        # A database the template names whose id is not valid must not be listed.
        prefix = made.url_template.rsplit("/", 1)[1].split("{tenant}")[0]
        admin = await asyncpg.connect(postgres_admin_url)
        try:
            await admin.execute(f'CREATE DATABASE "{prefix}Not-Valid"')
            await admin.execute(f'CREATE DATABASE "{prefix}pg_reserved"')
        finally:
            await admin.close()
        try:
            async with DatabaseRouter(
                RouterSettings(
                    databases={"primary": {"url": pg_url}},
                    tenancy={
                        "url_template": made.url_template,
                        "tenants": {"declared": {"url": pg_url}},
                    },
                )
            ) as router:
                assert await router.list_tenants() == ["acme", "declared", "globex", "initech"]
                assert router.tenant_engines() == {}  # listing builds no tenant engine
        finally:
            admin = await asyncpg.connect(postgres_admin_url)
            try:
                await admin.execute(f'DROP DATABASE "{prefix}Not-Valid"')
                await admin.execute(f'DROP DATABASE "{prefix}pg_reserved"')
            finally:
                await admin.close()


async def test_schema_tenants_are_the_schemas_the_template_names(pg_url: str) -> None:
    await tenant_schemas(pg_url, ["acme", "globex"], template="org_{tenant}")
    connection = await asyncpg.connect(pg_url)
    try:
        await connection.execute('CREATE SCHEMA "unrelated"')
        await connection.execute('CREATE SCHEMA "org_"')
    finally:
        await connection.close()
    async with DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": pg_url}},
            tenancy={"strategy": "schema", "schema_template": "org_{tenant}"},
        )
    ) as router:
        assert await router.list_tenants() == ["acme", "globex"]


class ListingCatalog:
    """A catalog that lists as well as looks up."""

    def __init__(self, tenants: dict[str, str]) -> None:
        self.tenants = tenants

    async def __call__(self, tenant: str) -> TenantSettings | None:
        url = self.tenants.get(tenant)
        return None if url is None else TenantSettings(url=url)

    async def list_tenants(self) -> list[str]:
        return [*self.tenants, "Bad Id"]


async def test_a_listing_catalog_lists_its_tenants() -> None:
    catalog = ListingCatalog({"acme": "sqlite://", "globex": "sqlite://"})
    async with DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": "sqlite://"}},
            tenancy={"tenants": {"declared": {"url": "sqlite://"}}},
        ),
        tenant_catalog=catalog,
    ) as router:
        assert await router.list_tenants() == ["acme", "declared", "globex"]


async def test_a_catalog_that_cannot_list_says_so() -> None:
    async def lookup(tenant: str) -> TenantSettings | None:
        return None

    async with DatabaseRouter(
        RouterSettings(databases={"primary": {"url": "sqlite://"}}, tenancy={}),
        tenant_catalog=lookup,
    ) as router:
        with pytest.raises(ConfigurationError, match="list_tenants"):
            await router.list_tenants()
