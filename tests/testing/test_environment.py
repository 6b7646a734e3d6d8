"""A test environment driven directly, for what the project's test app does not cover:
schema tenants, throwaway tenants of both strategies, and the errors of a configuration
the tests cannot serve."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import MetaData, text
from sqlalchemy.engine import make_url

from dbrouter import ConfigurationError, DatabaseRouter, RouterSettings
from dbrouter.testing.environment import TestEnvironment
from dbrouter.testing.isolation import Isolation
from dbrouter.testing.tenants import ThrowawayTenants
from tests.testing.example import metadata

MIGRATIONS = Path(__file__).resolve().parents[2] / "examples" / "migrations"


def app_router(database: str, **tenancy: object) -> DatabaseRouter:
    return DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": f"postgresql://app:secret@db.internal/{database}"}},
            tenancy=tenancy or None,
        )
    )


@pytest.fixture
async def database(postgres_admin_url: str) -> AsyncIterator[str]:
    """The name of the databases a test's environment makes, dropped after it."""
    name = f"dbr_env_{uuid.uuid4().hex[:8]}"
    yield name
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        for (found,) in await admin.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1", f"{name}%"
        ):
            await admin.execute(f'DROP DATABASE "{found}" WITH (FORCE)')
    finally:
        await admin.close()


async def a_test_with_a_tenant(
    environment: TestEnvironment,
) -> tuple[Isolation, DatabaseRouter, ThrowawayTenants, str]:
    """A test's isolation and router, with a tenant made for the test."""
    isolation = environment.isolation()
    tested = environment.router_for(isolation)
    tenants = ThrowawayTenants(environment)
    isolation.afterwards(tenants.drop_all)
    return isolation, tested, tenants, await tenants.create()


async def exists(url: str, sql: str, *args: object) -> bool:
    connection = await asyncpg.connect(url)
    try:
        return bool(await connection.fetchval(sql, *args))
    finally:
        await connection.close()


async def test_schema_tenants_keep_their_pin_inside_the_test(
    postgres_admin_url: str, database: str
) -> None:
    router = app_router(database, strategy="schema", tenants={"acme": {}})
    environment = await TestEnvironment.open(router, server=postgres_admin_url, metadata=metadata)
    url = make_url(postgres_admin_url).set(database=database).render_as_string(False)
    try:
        isolation, tested, tenants, made = await a_test_with_a_tenant(environment)
        async with tested.session() as primary:
            await primary.execute(text("SELECT 1"))
            async with tested.tenant_session("acme", commit=True) as session:
                # Raw SQL, no schema named: it lands in the tenant's schema.
                await session.execute(text("INSERT INTO notes (text) VALUES ('raw')"))
            async with tested.tenant_session(made, commit=True) as session:
                await session.execute(text("INSERT INTO notes (text) VALUES ('made')"))
            # The session that was open all along is not pinned to any tenant.
            assert await primary.scalar(text("SELECT count(*) FROM notes")) == 0
            assert await primary.scalar(text("SELECT count(*) FROM tenant_acme.notes")) == 1
            schema = f"tenant_{made}"
            assert await primary.scalar(text(f'SELECT count(*) FROM "{schema}".notes')) == 1
        await tested.dispose()
        await isolation.finish()
        assert tenants.created == ()
        assert not await exists(url, "SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
        assert not await exists(url, "SELECT count(*) FROM tenant_acme.notes")
    finally:
        await environment.close()


async def test_database_tenants_made_and_dropped(postgres_admin_url: str, database: str) -> None:
    router = app_router(
        database, url_template=f"postgresql://app:secret@db.internal/{database}_{{tenant}}"
    )
    environment = await TestEnvironment.open(router, server=postgres_admin_url, metadata=metadata)
    try:
        isolation = environment.isolation()
        tested = environment.router_for(isolation)
        tenants = ThrowawayTenants(environment)
        made = await tenants.create("one")
        async with tested.tenant_session(made, commit=True) as session:
            await session.execute(text("INSERT INTO notes (text) VALUES ('x')"))
        await tested.dispose()
        await isolation.finish()
        await tenants.drop_all()
        assert not await exists(
            postgres_admin_url,
            "SELECT 1 FROM pg_database WHERE datname = $1",
            f"{database}_one",
        )
    finally:
        await environment.close()


async def test_a_router_already_in_use_is_refused(postgres_admin_url: str, database: str) -> None:
    router = app_router(database)
    async with router:
        with pytest.raises(ConfigurationError, match="used before the tests took it over"):
            await TestEnvironment.open(router, server=postgres_admin_url)


async def test_servers_that_are_not_postgresql_are_refused(database: str) -> None:
    with pytest.raises(ConfigurationError, match="dbrouter_postgres_url: the test server must"):
        await TestEnvironment.open(app_router(database), server="sqlite:///x.db")
    with pytest.raises(ConfigurationError, match="dbrouter_standby_url: not a URL") as caught:
        await TestEnvironment.open(
            app_router(database), server="postgresql://h/db", standby="::secret::"
        )
    assert "secret" not in str(caught.value)


async def test_a_standby_that_does_not_replay_is_refused(
    postgres_admin_url: str, database: str
) -> None:
    from dbrouter.testing.preparation import caught_up

    url = make_url(postgres_admin_url)
    with pytest.raises(ConfigurationError, match="has not replayed the test server's writes"):
        await caught_up(url, url, timeout=0.2)


async def test_metadata_that_is_not_metadata_is_refused() -> None:
    from dbrouter.testing.preparation import load_metadata

    with pytest.raises(ConfigurationError, match="is a FastAPI, not SQLAlchemy MetaData"):
        load_metadata("notes.app:app")
    assert isinstance(load_metadata("dbrouter.models:Base"), MetaData)


async def test_migrations_run_before_the_tests(postgres_admin_url: str, database: str) -> None:
    scripts = MIGRATIONS
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {
                    "url": f"postgresql://app@db.internal/{database}",
                    "migrations": scripts / "primary",
                }
            },
            tenancy={
                "strategy": "schema",
                "migrations": scripts / "tenants",
                "tenants": {"acme": {}},
            },
        )
    )
    environment = await TestEnvironment.open(router, server=postgres_admin_url)
    try:
        isolation, tested, _, made = await a_test_with_a_tenant(environment)
        async with tested.session() as session:
            # The plans the first revisions write are there, in the migrated table.
            assert await session.scalar(text("SELECT count(price_cents) FROM plans"))
        for tenant in ("acme", made):
            async with tested.tenant_session(tenant) as session:
                assert await session.scalar(text("SELECT count(*) FROM projects")) == 0
        await tested.dispose()
        await isolation.finish()
    finally:
        await environment.close()


async def test_failed_migrations_stop_the_session(
    postgres_admin_url: str, database: str, tmp_path: Path
) -> None:
    from dbrouter import migrations

    scripts = migrations.init(tmp_path / "broken")
    (scripts / "versions" / "0001_broken.py").write_text(
        'revision = "0001"\ndown_revision = None\n\n\n'
        "def upgrade():\n    raise RuntimeError('this revision fails')\n\n\n"
        "def downgrade():\n    pass\n"
    )
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {
                    "url": f"postgresql://app@db.internal/{database}",
                    "migrations": scripts,
                }
            }
        )
    )
    with pytest.raises(ConfigurationError, match="migrating the test databases failed"):
        await TestEnvironment.open(router, server=postgres_admin_url)
