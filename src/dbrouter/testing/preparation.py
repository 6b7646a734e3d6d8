"""Getting the test servers ready before the first test: the databases the configuration
names (and the schemas of its declared schema tenants) created where missing, then their
tables — by the application's Alembic migrations when it configures them, or from its
SQLAlchemy metadata when it names one to the plugin."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from sqlalchemy import MetaData
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from ..engines import EngineFactory
from ..errors import ConfigurationError
from ..events import EventBus
from ..router import DatabaseRouter
from ..settings import DatabaseSettings, RouterSettings, tenant_url
from ..urls import is_postgresql, render

__all__ = [
    "Place",
    "caught_up",
    "create_places",
    "create_tables",
    "dsn",
    "has_migrations",
    "load_metadata",
    "migrate",
    "places",
    "tenant_place",
]

Place = tuple[URL, str | None]
"""Where tables go: a database, and the schema in it (None: its default schema)."""


def dsn(url: URL) -> str:
    """*url* as asyncpg.connect takes it."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def places(settings: RouterSettings) -> Iterator[Place]:
    """Every database of *settings* that holds data of its own (replicas do not), then
    every declared tenant's database or schema; each once."""
    seen: set[tuple[str, str | None]] = set()
    for place in _all_places(settings):
        url, schema = place
        key = (render(url.set(password=None)), schema)
        if is_postgresql(url) and key not in seen:
            seen.add(key)
            yield place


def tenant_place(settings: RouterSettings, tenant: str) -> Place:
    """Where *tenant*'s tables go: its database, or its schema in the schema database."""
    tenancy = settings.tenancy
    if tenancy is None:
        raise ConfigurationError("tenancy is not configured: there are no tenants to create")
    if tenancy.strategy == "schema":
        holder = settings.databases[tenancy.schema_database or settings.default_database]
        return holder.url, tenancy.schema_template.replace("{tenant}", tenant)
    found = tenancy.tenants.get(tenant)
    if found is not None and found.url is not None:
        return found.url, None
    if tenancy.url_template is None:
        raise ConfigurationError(f"tenant {tenant!r} has no database: no url_template")
    return tenant_url(tenancy.url_template, tenant), None


def _all_places(settings: RouterSettings) -> Iterator[Place]:
    for database in settings.databases.values():
        if database.replica_of is None:
            yield database.url, None
    tenancy = settings.tenancy
    if tenancy is None:
        return
    for tenant, found in tenancy.tenants.items():
        if tenancy.strategy == "schema" or found.url or tenancy.url_template is not None:
            yield tenant_place(settings, tenant)


async def create_places(settings: RouterSettings, server: URL) -> list[str]:
    """Create every database and schema of `places` that *server* lacks; their names."""
    import asyncpg

    created: list[str] = []
    wanted = list(places(settings))
    admin = await asyncpg.connect(dsn(server))
    try:
        existing = {row[0] for row in await admin.fetch("SELECT datname FROM pg_database")}
        for url, _ in wanted:
            name = url.database or ""
            if name and name not in existing:
                await admin.execute(f"CREATE DATABASE {_quoted(name)}")
                existing.add(name)
                created.append(name)
    finally:
        await admin.close()
    for url, schema in wanted:
        if schema is not None:
            connection = await asyncpg.connect(dsn(url))
            try:
                await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {_quoted(schema)}")
            finally:
                await connection.close()
    return created


async def create_tables(metadata: MetaData, where: list[Place]) -> None:
    """Create *metadata*'s tables (those missing) in each place of *where*."""
    factory = EngineFactory(events=EventBus())
    for number, (url, schema) in enumerate(where):
        database = factory.build(
            f"setup#{number}", DatabaseSettings(url=url), kind="maintenance", poolclass=NullPool
        )
        try:
            async with database.engine.begin() as connection:
                if schema is not None:
                    connection = await connection.execution_options(
                        schema_translate_map={None: schema}
                    )
                await connection.run_sync(metadata.create_all)
        finally:
            await factory.dispose(database)


def load_metadata(path: str) -> MetaData:
    """The `MetaData` named by *path* (``module:attribute``; a declarative base works)."""
    from .config import load

    found: Any = load(path, "dbrouter_metadata")
    metadata = getattr(found, "metadata", found)
    if not isinstance(metadata, MetaData):
        raise ConfigurationError(
            f"dbrouter_metadata: {path!r} is a {type(found).__name__}, not SQLAlchemy "
            "MetaData or a declarative base"
        )
    return metadata


def has_migrations(settings: RouterSettings) -> bool:
    """Whether any database or the tenants have an Alembic script directory."""
    if any(database.migrations for database in settings.databases.values()):
        return True
    return settings.tenancy is not None and settings.tenancy.migrations is not None


async def migrate(router: DatabaseRouter) -> None:
    """Upgrade every database and tenant of *router* that has migrations to head
    (`dbrouter.migrations`, extra ``migrations``); nothing when none has."""
    if not has_migrations(router.settings):
        return
    from .. import migrations

    try:
        upgrade = migrations.upgrade
    except ModuleNotFoundError as exc:
        raise ConfigurationError(f"the configuration names migrations: {exc}") from None
    report = await upgrade(router)
    if not report.ok:
        failed = [(result.target, result.error) for result in report.targets if result.error]
        raise ConfigurationError(f"migrating the test databases failed: {failed}")


async def caught_up(server: URL, standby: URL, *, timeout: float = 30.0) -> None:
    """Wait until *standby* has replayed everything *server* has written: the databases
    and tables made for the tests are there for the tests that read the standby."""
    import asyncpg

    primary = await asyncpg.connect(dsn(server))
    try:
        # A commit made with synchronous_commit on flushes the WAL before it, and the
        # transactional message makes sure there is a commit that writes WAL.
        async with primary.transaction():
            await primary.execute("SET LOCAL synchronous_commit = on")
            await primary.execute("SELECT pg_logical_emit_message(true, 'dbrouter', '')")
        target = await primary.fetchval("SELECT pg_current_wal_lsn()")
    finally:
        await primary.close()
    replica = await asyncpg.connect(dsn(standby))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await replica.fetchval(
            "SELECT coalesce(pg_last_wal_replay_lsn() >= $1, false)", target
        ):
            if loop.time() > deadline:
                raise ConfigurationError(
                    f"dbrouter_standby_url: the standby has not replayed the test server's "
                    f"writes within {timeout:g} s; is it a streaming standby of that server?"
                )
            await asyncio.sleep(0.05)
    finally:
        await replica.close()


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
