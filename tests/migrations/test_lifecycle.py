"""A tenant created at run time is migrated to head before it is served; one whose first
migration fails is not created at all."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text

from dbrouter import TenantError, migrations
from tests.migrations.conftest import Fleet, json_of, run_cli, tables_of, version_of
from tests.support.scripts import Revision, add_revision


async def test_a_created_schema_tenant_is_at_head(schema_fleet: Fleet) -> None:
    url = schema_fleet.urls["database:primary"]
    async with schema_fleet.router() as router:
        await router.create_tenant("newco")
        assert await version_of(url, "tenant_newco") == ["t2"]
        async with router.tenant_session("newco", commit=True) as session:
            await session.execute(text("INSERT INTO notes (body) VALUES ('first')"))
        status = await migrations.status(router, tenants=["newco"])
        assert status.ok


async def test_a_created_database_tenant_is_at_head(database_fleet: Fleet) -> None:
    result = run_cli("tenants", "create", "newco", environment=database_fleet.environment)
    assert result.returncode == 0, result.stderr
    url = database_fleet.urls["tenant:acme"].replace("_acme", "_newco")
    try:
        assert await version_of(url) == ["t2"]
        assert await tables_of(url) == {"alembic_version", "notes", "raw_marks"}
        status = run_cli(
            "migrate",
            "status",
            "--tenant",
            "newco",
            "--json",
            environment=database_fleet.environment,
        )
        assert status.returncode == 0, status.stderr
        assert json_of(status)["targets"][0]["after"] == ["t2"]
    finally:
        dropped = run_cli(
            "tenants", "drop", "newco", "--yes", environment=database_fleet.environment
        )
        assert dropped.returncode == 0, dropped.stderr


async def test_a_tenant_whose_first_migration_fails_is_not_created(schema_fleet: Fleet) -> None:
    add_revision(schema_fleet.scripts["tenants"], Revision("t3", "t2", 'op.execute("SELECT 1/0")'))
    url = schema_fleet.urls["database:primary"]
    async with schema_fleet.router() as router:
        with pytest.raises(
            TenantError, match=r"tenant 'newco' was not created: .*division by zero"
        ):
            await router.create_tenant("newco")
        assert "newco" not in await router.list_tenants()
    connection = await asyncpg.connect(url)
    try:
        assert not await connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'tenant_newco')"
        )
    finally:
        await connection.close()
