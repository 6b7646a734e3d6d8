"""Fleets to migrate on the suite's PostgreSQL server: named databases, a replica, tenants
with a database each or a schema each, and their script directories."""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from asyncpg.transaction import Transaction
from sqlalchemy.engine import make_url

from dbrouter import DatabaseRouter, RouterSettings
from dbrouter.migrations.locks import lock_key
from tests.conftest import fresh_database
from tests.support.scripts import (
    ANALYTICS_REVISIONS,
    PRIMARY_REVISIONS,
    TENANT_REVISIONS,
    script_directory,
)

TENANTS = ("acme", "globex", "hooli", "initech", "umbrella")
CONSOLE_SCRIPT = Path(sysconfig.get_path("scripts")) / "dbrouter"


@dataclass
class Fleet:
    """Databases and tenants, the settings that name them, and where each target is."""

    settings: dict[str, Any]
    """Keyword arguments of `RouterSettings`."""
    environment: dict[str, str]
    """The same settings as ``DBROUTER_*`` variables."""
    urls: dict[str, str]
    """The URL of each target's database (and of ``replica``), by target name."""
    schemas: dict[str, str] = field(default_factory=dict)
    """A schema tenant's schema, by target name."""
    scripts: dict[str, Path] = field(default_factory=dict)
    """The script directory of each kind: ``primary``, ``analytics``, ``tenants``."""

    def router(self, **overrides: Any) -> DatabaseRouter:
        """A router of the fleet's settings, *overrides* applied at the top level."""
        return DatabaseRouter(RouterSettings(**{**self.settings, **overrides}))

    @property
    def tenant_targets(self) -> list[str]:
        return [f"tenant:{tenant}" for tenant in TENANTS]


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ``DBROUTER_*`` variable or ``.env`` file of the machine reaches the tests."""
    for key in list(os.environ):
        if key.upper().startswith("DBROUTER_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@asynccontextmanager
async def tenant_databases(admin_url: str, tenants: Sequence[str]) -> AsyncIterator[str]:
    """An empty database per tenant; yields the URL template that names them."""
    prefix = f"dbm{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    try:
        for tenant in tenants:
            await admin.execute(f'CREATE DATABASE "{prefix}_{tenant}"')
    finally:
        await admin.close()
    base = make_url(admin_url)
    template = base.set(database=f"{prefix}_TENANT").render_as_string(hide_password=False)
    try:
        yield template.replace("TENANT", "{tenant}")
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            for tenant in tenants:
                await admin.execute(f'DROP DATABASE IF EXISTS "{prefix}_{tenant}" WITH (FORCE)')
        finally:
            await admin.close()


def kinds(tmp_path: Path) -> dict[str, Path]:
    """A script directory for each kind of database, with its revisions."""
    return {
        "primary": script_directory(tmp_path / "primary", PRIMARY_REVISIONS),
        "analytics": script_directory(tmp_path / "analytics", ANALYTICS_REVISIONS),
        "tenants": script_directory(tmp_path / "tenants", TENANT_REVISIONS),
    }


@pytest.fixture
async def database_fleet(postgres_admin_url: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    """``primary`` and ``analytics`` with migrations, ``replica`` of primary (a database of
    its own here, to show it is never touched), five tenants with a database each."""
    scripts = kinds(tmp_path / "scripts")
    async with (
        fresh_database(postgres_admin_url) as primary,
        fresh_database(postgres_admin_url) as analytics,
        fresh_database(postgres_admin_url) as replica,
        tenant_databases(postgres_admin_url, TENANTS) as template,
    ):
        settings: dict[str, Any] = {
            "databases": {
                "primary": {"url": primary, "migrations": str(scripts["primary"])},
                "replica": {"url": replica, "replica_of": "primary"},
                "analytics": {"url": analytics, "migrations": str(scripts["analytics"])},
            },
            "tenancy": {"url_template": template, "migrations": str(scripts["tenants"])},
        }
        urls = {
            "database:primary": primary,
            "database:analytics": analytics,
            "replica": replica,
            **{f"tenant:{tenant}": template.replace("{tenant}", tenant) for tenant in TENANTS},
        }
        yield Fleet(settings, environment_of(settings), urls, scripts=scripts)


@pytest.fixture
async def schema_fleet(pg_url: str, tmp_path: Path) -> Fleet:
    """``primary`` with migrations and five tenants with a schema each in it."""
    scripts = kinds(tmp_path / "scripts")
    connection = await asyncpg.connect(pg_url)
    try:
        for tenant in TENANTS:
            await connection.execute(f'CREATE SCHEMA "tenant_{tenant}"')
    finally:
        await connection.close()
    settings: dict[str, Any] = {
        "databases": {"primary": {"url": pg_url, "migrations": str(scripts["primary"])}},
        "tenancy": {"strategy": "schema", "migrations": str(scripts["tenants"])},
    }
    urls = {"database:primary": pg_url, **{f"tenant:{tenant}": pg_url for tenant in TENANTS}}
    schemas = {f"tenant:{tenant}": f"tenant_{tenant}" for tenant in TENANTS}
    return Fleet(settings, environment_of(settings), urls, schemas, scripts)


def environment_of(settings: Mapping[str, Any], prefix: str = "DBROUTER") -> dict[str, str]:
    """*settings* as ``DBROUTER_*`` variables."""
    variables: dict[str, str] = {}
    for key, value in settings.items():
        name = f"{prefix}__{key.upper()}" if prefix != "DBROUTER" else f"DBROUTER_{key.upper()}"
        if isinstance(value, Mapping):
            variables.update(environment_of(value, name))
        else:
            variables[name] = str(value)
    return variables


@dataclass
class HeldLock:
    """Another session holding a target's advisory lock."""

    connection: asyncpg.Connection
    transaction: Transaction
    """Commit it to let the lock go."""
    pid: int
    """The session's server process."""


@asynccontextmanager
async def held_lock(url: str, target: str) -> AsyncIterator[HeldLock]:
    """A session of the database at *url* holding *target*'s lock, as a migration of it
    running elsewhere would."""
    connection = await asyncpg.connect(url)
    try:
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute("SELECT pg_advisory_xact_lock($1)", lock_key(target))
        yield HeldLock(
            connection, transaction, await connection.fetchval("SELECT pg_backend_pid()")
        )
    finally:
        await connection.close()


def run_cli(
    *arguments: str, environment: Mapping[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``dbrouter`` console script with *arguments*."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DBROUTER_")}
    env.update(environment)
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *arguments],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def json_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON document a ``--json`` run printed."""
    try:
        document: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"not JSON (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    return document


async def version_of(url: str, schema: str | None = None) -> list[str]:
    """The revisions in the ``alembic_version`` table of *url* (in *schema*)."""
    table = "alembic_version" if schema is None else f'"{schema}".alembic_version'
    connection = await asyncpg.connect(url)
    try:
        exists = await connection.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
        if not exists:
            return []
        return sorted(await connection.fetchval(f"SELECT array_agg(version_num) FROM {table}"))
    finally:
        await connection.close()


async def tables_of(url: str, schema: str = "public") -> set[str]:
    """The tables of *schema* in the database at *url*."""
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1", schema
        )
    finally:
        await connection.close()
    return {row["tablename"] for row in rows}
