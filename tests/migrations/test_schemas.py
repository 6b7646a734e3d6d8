"""Schema tenants: a tenant's migration stays inside its own schema, and autogenerate
compares the metadata with that schema alone."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import asyncpg

from dbrouter import migrations
from tests.migrations.conftest import TENANTS, Fleet, json_of, run_cli, tables_of, version_of

Snapshot = dict[str, Any]


async def snapshot(url: str) -> dict[str, Snapshot]:
    """Per schema: its relations, constraints and the row count of each table."""
    connection = await asyncpg.connect(url)
    try:
        schemas = [
            row["nspname"]
            for row in await connection.fetch(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
                "AND nspname <> 'information_schema'"
            )
        ]
        found: dict[str, Snapshot] = {}
        for schema in schemas:
            relations = await connection.fetch(
                "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = $1",
                schema,
            )
            constraints = await connection.fetch(
                "SELECT conname FROM pg_constraint c JOIN pg_namespace n "
                "ON n.oid = c.connamespace WHERE n.nspname = $1",
                schema,
            )
            counts = {
                row["relname"]: await connection.fetchval(
                    f'SELECT count(*) FROM "{schema}"."{row["relname"]}"'
                )
                for row in relations
                if row["relkind"] == "r"
            }
            found[schema] = {
                "relations": sorted((row["relname"], row["relkind"]) for row in relations),
                "constraints": sorted(row["conname"] for row in constraints),
                "rows": counts,
            }
        return found
    finally:
        await connection.close()


async def test_a_schema_tenant_migration_touches_no_other_schema(schema_fleet: Fleet) -> None:
    fleet = schema_fleet
    url = fleet.urls["database:primary"]
    async with fleet.router() as router:
        assert (await migrations.upgrade(router, databases=["primary"])).ok
        before = await snapshot(url)
        report = await migrations.upgrade(router, tenants=["acme"])
        assert report.ok, report.as_dict()
        after = await snapshot(url)
    changed = sorted(schema for schema in after if after[schema] != before.get(schema))
    assert changed == ["tenant_acme"]
    assert {name for name, _ in after["tenant_acme"]["relations"]} >= {
        "alembic_version",
        "notes",
        "raw_marks",
    }
    assert "ck_notes_body_not_empty" in after["tenant_acme"]["constraints"]
    assert await tables_of(url) == {"alembic_version", "plans"}
    assert await version_of(url) == ["p2"]
    for tenant in TENANTS[1:]:
        assert await tables_of(url, f"tenant_{tenant}") == set()


MODELS = """
from sqlalchemy import Column, Integer, MetaData, Table, Text

primary = MetaData()
Table("plans", primary, Column("id", Integer, primary_key=True), Column("price", Integer))
Table("invoices", primary, Column("id", Integer, primary_key=True))

tenants = MetaData()
Table(
    "notes",
    tenants,
    Column("id", Integer, primary_key=True),
    Column("body", Text, nullable=False),
)
Table("raw_marks", tenants, Column("id", Integer))
Table("labels", tenants, Column("id", Integer, primary_key=True), Column("name", Text))
"""


def use_metadata(directory: Path, expression: str) -> None:
    """Point the ``env.py`` of *directory* at ``app_models.<expression>``."""
    env = directory / "env.py"
    env.write_text(
        env.read_text().replace(
            "target_metadata = None",
            f"import app_models\ntarget_metadata = app_models.{expression}",
        )
    )


def autogenerate(
    message: str, *selection: str, environment: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``dbrouter migrate revision --autogenerate`` for *selection*."""
    arguments = ("migrate", "revision", "-m", message, "--autogenerate", *selection)
    return run_cli(*arguments, environment=environment, cwd=cwd)


def written(result: subprocess.CompletedProcess[str]) -> str:
    """The revision file a ``revision`` run says it created."""
    return Path(result.stdout.split("created ", 1)[1].strip()).read_text()


def test_autogenerate_compares_each_kind_with_its_own_tables(
    schema_fleet: Fleet, tmp_path: Path
) -> None:
    fleet = schema_fleet
    (tmp_path / "app_models.py").write_text(MODELS)
    use_metadata(fleet.scripts["primary"], "primary")
    use_metadata(fleet.scripts["tenants"], "tenants")
    env = fleet.environment
    assert run_cli("migrate", "upgrade", environment=env, cwd=tmp_path).returncode == 0

    primary = autogenerate("invoices", "--database", "primary", environment=env, cwd=tmp_path)
    assert primary.returncode == 0, primary.stderr
    source = written(primary)
    assert "op.create_table('invoices'" in source
    assert "plans" not in source

    tenants = autogenerate("labels", "--tenants", environment=env, cwd=tmp_path)
    assert tenants.returncode == 0, tenants.stderr
    source = written(tenants)
    upgrade = source.split("def downgrade", 1)[0]
    assert "op.create_table('labels'" in upgrade
    assert "alter_column" not in upgrade  # notes is as the metadata says
    # Neither the tenant's version table nor public's tables are the tenant's to drop.
    assert "drop_table" not in upgrade
    assert "alembic_version" not in source
    assert "plans" not in source

    upgraded = run_cli("migrate", "upgrade", "--json", environment=env, cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert json_of(upgraded)["failed"] == 0
    assert run_cli("migrate", "status", environment=env, cwd=tmp_path).returncode == 0


def test_autogenerate_needs_a_tenant_and_an_up_to_date_one(
    schema_fleet: Fleet, tmp_path: Path
) -> None:
    fleet = schema_fleet
    (tmp_path / "app_models.py").write_text(MODELS)
    use_metadata(fleet.scripts["tenants"], "tenants")
    env = fleet.environment
    late = autogenerate("x", "--tenant", "hooli", environment=env, cwd=tmp_path)
    assert late.returncode == 1
    assert "tenant:hooli: Target database is not up to date" in late.stderr
    alone = {
        **env,
        "DBROUTER_TENANCY__SCHEMA_TEMPLATE": "nobody_{tenant}",
    }
    nobody = autogenerate("x", "--tenants", environment=alone, cwd=tmp_path)
    assert nobody.returncode == 2
    assert "there is no tenant yet" in nobody.stderr
