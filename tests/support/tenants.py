"""Building tenants on the test server: a database per tenant, or a schema per tenant."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from dbrouter import DatabaseRouter

TABLE = "CREATE TABLE notes (id serial PRIMARY KEY, owner text NOT NULL, body text NOT NULL)"


@dataclass(frozen=True)
class TenantDatabases:
    """Tenants with a database each, reachable through ``url_template``."""

    url_template: str
    urls: dict[str, str]


@asynccontextmanager
async def tenant_databases(
    admin_url: str, tenants: Sequence[str]
) -> AsyncIterator[TenantDatabases]:
    """A database per tenant, each with a ``notes`` table holding one row of its own."""
    prefix = f"dbt{uuid.uuid4().hex[:8]}"
    names = {tenant: f"{prefix}_{tenant}" for tenant in tenants}
    admin = await asyncpg.connect(admin_url)
    try:
        for name in names.values():
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = make_url(admin_url)
    urls = {
        tenant: base.set(database=name).render_as_string(hide_password=False)
        for tenant, name in names.items()
    }
    for tenant, url in urls.items():
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(TABLE)
            await connection.execute("INSERT INTO notes (owner, body) VALUES ($1, 'seed')", tenant)
        finally:
            await connection.close()
    template = base.set(database=f"{prefix}_TENANT").render_as_string(hide_password=False)
    try:
        yield TenantDatabases(template.replace("TENANT", "{tenant}"), urls)
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            for name in names.values():
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def tenant_schemas(
    url: str, tenants: Sequence[str], template: str = "tenant_{tenant}"
) -> None:
    """A schema per tenant in the database at *url*, each with its own ``notes`` table and
    one row; ``public`` gets a ``notes`` table too, holding a row no tenant may see."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(TABLE)
        await connection.execute("INSERT INTO notes (owner, body) VALUES ('public', 'seed')")
        for tenant in tenants:
            schema = template.replace("{tenant}", tenant)
            await connection.execute(f'CREATE SCHEMA "{schema}"')
            await connection.execute(TABLE.replace("notes", f'"{schema}".notes'))
            await connection.execute(
                f"""INSERT INTO "{schema}".notes (owner, body) VALUES ($1, 'seed')""", tenant
            )
    finally:
        await connection.close()


async def owners_in(router: DatabaseRouter, tenant: str) -> list[str]:
    """The ``owner`` of every row of the ``notes`` table *tenant*'s session sees."""
    async with router.tenant_session(tenant) as session:
        return list((await session.execute(text("SELECT owner FROM notes"))).scalars())
