"""Fixtures: a real PostgreSQL server for the whole run, a fresh database per test, and an
in-process client for FastAPI apps.

``DBROUTER_TEST_POSTGRES_URL`` (a superuser URL) points the suite at an existing server;
without it the suite starts a throwaway server of its own and removes it afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.support.pgbouncer import describe_pgbouncer
from tests.support.postgres import CLIENT_BACKENDS, PostgresServer, find_install, running_server

POSTGRES_URL_ENV = "DBROUTER_TEST_POSTGRES_URL"

# pytest's own fixture for running pytest sessions in-process (tests/testing/).
pytest_plugins = ["pytester"]


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which PostgreSQL and which PgBouncer the run uses, at the top of its output."""
    try:
        install = find_install()
    except RuntimeError as exc:
        servers = f"no server programs found, so every test that needs them fails: {exc}"
    else:
        servers = (
            f"throwaway servers of {install.version()} from {install.bindir}, {install.source}"
        )
    configured = os.environ.get(POSTGRES_URL_ENV)
    if configured:
        lines = [
            f"postgresql: {shown_url(configured)} (from ${POSTGRES_URL_ENV})",
            f"postgresql, for tests that stop, restart or replicate a server: {servers}",
        ]
    else:
        lines = [f"postgresql: {servers}"]
    return [*lines, f"pgbouncer: {describe_pgbouncer()}"]


def shown_url(url: str) -> str:
    """*url* with its password hidden, wherever it is written."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "(not a URL SQLAlchemy can read)"
    return parsed.difference_update_query(["password"]).render_as_string(hide_password=True)


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A superuser URL (``postgresql://...``) of the server every PostgreSQL test uses."""
    configured = os.environ.get(POSTGRES_URL_ENV)
    if configured:
        yield configured
        return
    with running_server() as server:
        yield server.url()


@pytest.fixture
async def pg_url(postgres_admin_url: str) -> AsyncIterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    async with fresh_database(postgres_admin_url) as url:
        yield url


@pytest.fixture
async def pg_url_2(postgres_admin_url: str) -> AsyncIterator[str]:
    """A second new database on the same server."""
    async with fresh_database(postgres_admin_url) as url:
        yield url


@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A throwaway server for this test alone, which the test may stop and restart."""
    with running_server() as server:
        yield server


@asynccontextmanager
async def fresh_database(admin_url: str) -> AsyncIterator[str]:
    """Create a database named at random, yield its URL, drop it (with its connections)."""
    name = f"dbr_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def server_connections(url: str) -> int:
    """How many server connections are open to *url*'s database, this check's excluded."""
    database = make_url(url).database
    connection = await asyncpg.connect(
        make_url(url).set(database="postgres").render_as_string(hide_password=False)
    )
    try:
        count = await connection.fetchval(
            f"SELECT count(*) FROM {CLIENT_BACKENDS} AND datname = $1",
            database,
        )
    finally:
        await connection.close()
    return int(count)


def copy_state_per_request(app: ASGIApp) -> ASGIApp:
    """Give every request its own copy of the lifespan state, as uvicorn does."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and "state" in scope:
            scope = {**scope, "state": dict(scope["state"])}
        await app(scope, receive, send)

    return wrapped


@asynccontextmanager
async def serve(
    app: Any, *, raise_app_exceptions: bool = False
) -> AsyncIterator[httpx.AsyncClient]:
    """Run *app*'s lifespan and yield a client that sends requests to it in-process."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(
            app=copy_state_per_request(manager.app), raise_app_exceptions=raise_app_exceptions
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
