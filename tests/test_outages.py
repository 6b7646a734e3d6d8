"""Why a database failed: each failure provoked for real, through asyncpg and psycopg, and
told the same way by `router.check()`, ``GET /health/databases`` and ``dbrouter check``
— with the SQLSTATE where there is one, and never a password, a user name or an address."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url

from dbrouter import DatabaseRouter, DatabaseUnavailableError, RouterSettings
from dbrouter.outages import (
    FailureReason,
    as_unavailable,
    classify,
    outage_reason,
    server_outage,
)
from tests.conftest import serve
from tests.support.auth import create_role, require_password
from tests.support.postgres import HOST, PostgresServer, free_port, running_server

Driver = Literal["asyncpg", "psycopg"]
DRIVERS: tuple[Driver, ...] = ("asyncpg", "psycopg")

PASSWORD = "p@ss:w/rd%#1"
WRONG_PASSWORD = "wr@ng:/%#2"
USER = "reasons_user"
LIMITED_USER = "reasons_limited"
UNKNOWN_USER = "reasons_ghost"
APP_DATABASE = "reasons_app"
LOCKED_DATABASE = "reasons_locked"
MISSING_DATABASE = "reasons_missing"
MISSING_HOST = "reasons-missing-host.invalid"
PASSWORDS = (PASSWORD, WRONG_PASSWORD)
SECRETS = (*PASSWORDS, "reasons_", MISSING_HOST, HOST)


def postgres_url(
    driver: Driver,
    *,
    port: int,
    user: str = USER,
    password: str | None = PASSWORD,
    database: str = APP_DATABASE,
    host: str = HOST,
    tls: bool = False,
) -> str:
    """A URL for *driver*; the password is quoted, as a URL needs it."""
    login = user if password is None else f"{user}:{quote(password, safe='')}"
    scheme = "postgresql" if driver == "asyncpg" else "postgresql+psycopg"
    query = ""
    if tls:
        query = "?ssl=require" if driver == "asyncpg" else "?sslmode=require"
    return f"{scheme}://{login}@{host}:{port}/{database}{query}"


def assert_no_secret(output: str, *ports: int, secrets: tuple[str, ...] = SECRETS) -> None:
    """No password, user, database or host name, and none of *ports*, in *output*."""
    for secret in (*secrets, *(quote(s, safe="") for s in secrets), *map(str, ports)):
        assert secret not in output, f"{secret!r} shown in {output!r}"


@pytest.fixture(scope="module")
def auth_server() -> Iterator[PostgresServer]:
    """A server where *USER* must give its password (SCRAM-SHA-256), *LIMITED_USER* may
    open no connection, and nobody but superusers may connect to *LOCKED_DATABASE*."""
    with running_server() as server:
        create_role(server, USER, PASSWORD)
        create_role(server, LIMITED_USER, PASSWORD, "CONNECTION LIMIT 0")
        server.execute(f'CREATE DATABASE {APP_DATABASE} OWNER "{USER}"')
        server.execute(f"CREATE DATABASE {LOCKED_DATABASE}")
        server.execute(f"REVOKE CONNECT ON DATABASE {LOCKED_DATABASE} FROM PUBLIC")
        require_password(server, USER)
        yield server


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel does) and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind((HOST, 0))
        silent.listen(64)
        yield silent.getsockname()[1]


# database name -> (error_kind, sqlstate, error) that its health shows; None when up.
EXPECTED: dict[str, tuple[str | None, str | None, str | None]] = {
    "primary": (None, None, None),
    "wrong_password": (
        "authentication failed",
        "28P01",
        "authentication failed (SQLSTATE 28P01)",
    ),
    "unknown_role": ("authentication failed", "28000", "authentication failed (SQLSTATE 28000)"),
    "unknown_database": (
        "database does not exist",
        "3D000",
        "database does not exist (SQLSTATE 3D000)",
    ),
    "no_connect_privilege": ("permission denied", "42501", "permission denied (SQLSTATE 42501)"),
    "connection_limit": (
        "too many connections",
        "53300",
        "too many connections (SQLSTATE 53300)",
    ),
    "refused": ("unreachable", None, "unreachable"),
    "unknown_host": ("unreachable", None, "unreachable"),
    "tls_refused": ("TLS", None, "TLS: the server does not offer TLS"),
    "silent": ("timeout", None, "no answer within connect_timeout"),
}


def failing_databases(
    driver: Driver, server: PostgresServer, silent: int, refused: int
) -> dict[str, str]:
    """A URL per name of *EXPECTED*, in its order; all but the first fail."""
    port = server.port
    return {
        "primary": postgres_url(driver, port=port),
        "wrong_password": postgres_url(driver, port=port, password=WRONG_PASSWORD),
        "unknown_role": postgres_url(driver, port=port, user=UNKNOWN_USER, password=None),
        "unknown_database": postgres_url(driver, port=port, database=MISSING_DATABASE),
        "no_connect_privilege": postgres_url(driver, port=port, database=LOCKED_DATABASE),
        "connection_limit": postgres_url(driver, port=port, user=LIMITED_USER),
        "refused": postgres_url(driver, port=refused),
        "unknown_host": postgres_url(driver, port=port, host=MISSING_HOST),
        "tls_refused": postgres_url(driver, port=port, tls=True),
        "silent": postgres_url(driver, port=silent),
    }


def settings_of(urls: dict[str, str]) -> dict[str, Any]:
    return {name: {"url": url, "connect_timeout": 1} for name, url in urls.items()}


def assert_reasons(databases: dict[str, Any]) -> None:
    """*databases* (health JSON) say what *EXPECTED* says, in its order."""
    assert list(databases) == list(EXPECTED)
    for name, (kind, sqlstate, error) in EXPECTED.items():
        health = databases[name]
        shown = (health["status"], health["error_kind"], health["sqlstate"], health["error"])
        assert shown == ("down" if kind else "up", kind, sqlstate, error), name


@pytest.mark.parametrize("driver", DRIVERS)
async def test_check_says_why_each_database_is_down(
    driver: Driver, auth_server: PostgresServer, silent_port: int
) -> None:
    refused = free_port()
    urls = failing_databases(driver, auth_server, silent_port, refused)
    router = DatabaseRouter(RouterSettings(databases=settings_of(urls)))
    async with router:
        report = await router.check()
    assert not report.ok
    for name, (kind, sqlstate, error) in EXPECTED.items():
        health = report.databases[name]
        assert (health.error_kind, health.sqlstate, health.error) == (kind, sqlstate, error)
    document = json.dumps(report.as_dict())
    assert_reasons(json.loads(document)["databases"])
    assert_no_secret(document, auth_server.port, silent_port, refused)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_the_health_endpoint_says_why(
    driver: Driver, auth_server: PostgresServer, silent_port: int
) -> None:
    refused = free_port()
    urls = failing_databases(driver, auth_server, silent_port, refused)
    router = DatabaseRouter(RouterSettings(databases=settings_of(urls)))
    app = FastAPI(lifespan=router.lifespan)
    app.include_router(router.health_router())
    async with serve(app) as client:
        response = await client.get("/health/databases")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert_reasons(response.json()["databases"])
    assert_no_secret(response.text, auth_server.port, silent_port, refused)


def run_check(
    urls: dict[str, str], cwd: Path, *arguments: str
) -> subprocess.CompletedProcess[str]:
    """The installed ``dbrouter check`` with *urls* as ``DBROUTER_*`` variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DBROUTER_")}
    for name, url in urls.items():
        env[f"DBROUTER_DATABASES__{name.upper()}__URL"] = url
        env[f"DBROUTER_DATABASES__{name.upper()}__CONNECT_TIMEOUT"] = "1"
    script = Path(sys.executable).with_name("dbrouter")
    return subprocess.run(
        [str(script), "check", *arguments],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("driver", DRIVERS)
async def test_the_check_command_says_why(
    driver: Driver, auth_server: PostgresServer, silent_port: int, tmp_path: Path
) -> None:
    refused = free_port()
    urls = failing_databases(driver, auth_server, silent_port, refused)
    ports = (auth_server.port, silent_port, refused)

    result = await asyncio.to_thread(run_check, urls, tmp_path, "--json")
    assert result.returncode == 1, result.stderr
    assert_reasons(json.loads(result.stdout)["databases"])
    assert_no_secret(result.stdout + result.stderr, *ports)

    result = await asyncio.to_thread(run_check, urls, tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(EXPECTED)
    for line, (name, (kind, _, error)) in zip(lines, EXPECTED.items(), strict=True):
        if kind is None:
            assert line.split()[:2] == [name, "up"]
        else:
            assert line.split(maxsplit=2) == [name, "down", error]
    assert_no_secret(result.stdout + result.stderr, *ports)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_replica_that_refuses_the_probe_leaves_rotation_in_one_line(
    driver: Driver, auth_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dbrouter")
    port = auth_server.port
    router = DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": postgres_url(driver, port=port)},
                "replica": {
                    "url": postgres_url(driver, port=port, password=WRONG_PASSWORD),
                    "replica_of": "primary",
                    "connect_timeout": 2,
                },
            }
        )
    )
    async with router:
        report = await router.check()
        again = await router.check()
    reason = "authentication failed (SQLSTATE 28P01)"
    for checked in (report, again):
        [status] = checked.databases["replica"].replicas
        assert (status.in_rotation, status.reason) == (False, reason)
        assert checked.databases["replica"].error == reason
    said = [record for record in caplog.records if record.levelno >= logging.INFO]
    warnings = [record for record in said if record.levelno >= logging.WARNING]
    assert [record.getMessage() for record in warnings] == [
        f"dbrouter: replica 'replica' leaves rotation: {reason}"
    ]
    assert all(record.exc_info is None and record.exc_text is None for record in said)
    assert_no_secret(caplog.text, secrets=PASSWORDS)  # the DEBUG traceback names the user


# ---- failures of statements and of connections in use ----------------------------------


def with_driver(url: str, driver: Driver) -> str:
    drivername = "postgresql+asyncpg" if driver == "asyncpg" else "postgresql+psycopg"
    return make_url(url).set(drivername=drivername).render_as_string(hide_password=False)


async def failure_of(router: DatabaseRouter, *statements: str) -> Exception:
    """What running *statements* in one session of *router* raises."""
    try:
        async with router.session() as session:
            for statement in statements:
                await session.execute(text(statement))
    except Exception as exc:
        return exc
    raise AssertionError(f"{statements} did not fail")


@pytest.mark.parametrize("driver", DRIVERS)
async def test_statement_failures_are_told_apart(driver: Driver, pg_url: str) -> None:
    router = DatabaseRouter(
        RouterSettings(databases={"primary": {"url": with_driver(pg_url, driver)}})
    )
    async with router:
        too_slow = await failure_of(router, "SET statement_timeout = 50", "SELECT pg_sleep(5)")
        forbidden = await failure_of(
            # The role is created in the session's transaction, which the failure rolls back.
            router,
            "CREATE ROLE reasons_reader",
            "SET ROLE reasons_reader",
            "SELECT * FROM pg_authid",
        )
        async with router.session() as session:
            pid = await session.scalar(text("SELECT pg_backend_pid()"))
            sleeping = asyncio.ensure_future(session.execute(text("SELECT pg_sleep(5)")))
            await asyncio.sleep(0.3)
            async with router.session() as other:
                await other.execute(text("SELECT pg_cancel_backend(:pid)"), {"pid": pid})
            cancelled = (await asyncio.gather(sleeping, return_exceptions=True))[0]
        # Last: the setting stays on the pooled connection.
        read_only = await failure_of(
            router, "SET default_transaction_read_only = on", "COMMIT", "CREATE TABLE t (x int)"
        )
    assert classify(read_only) == FailureReason("read-only", "25006")
    assert str(classify(read_only)) == "read-only transaction (SQLSTATE 25006)"
    assert classify(too_slow) == FailureReason("statement timeout", "57014")
    assert classify(forbidden) == FailureReason("permission denied", "42501")
    assert isinstance(cancelled, Exception)
    assert classify(cancelled) == FailureReason("cancelled", "57014")
    for failure in (read_only, forbidden, cancelled):
        assert outage_reason(failure) is None  # the application's to handle, not a 503
    # A statement past statement_timeout is answered 503 with Retry-After, yet the server is
    # up: no outage, and no replica would leave rotation for it.
    assert isinstance(too_slow, DatabaseUnavailableError)
    assert not server_outage(too_slow)


@pytest.mark.parametrize("driver", DRIVERS)
async def test_other_errors_name_their_class_and_sqlstate(driver: Driver, pg_url: str) -> None:
    router = DatabaseRouter(
        RouterSettings(databases={"primary": {"url": with_driver(pg_url, driver)}})
    )
    async with router:
        missing = await failure_of(router, "SELECT * FROM no_such_table")
    reason = classify(missing)
    name = "UndefinedTableError" if driver == "asyncpg" else "UndefinedTable"
    assert reason == FailureReason("other", "42P01", name)
    assert reason.text == f"other error: {name} (SQLSTATE 42P01)"


@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_session_left_idle_in_a_transaction_is_ended(driver: Driver, pg_url: str) -> None:
    router = DatabaseRouter(
        RouterSettings(databases={"primary": {"url": with_driver(pg_url, driver)}})
    )
    async with router, router.session() as session:
        await session.execute(text("SET idle_in_transaction_session_timeout = 100"))
        await session.execute(text("SELECT 1"))  # a transaction is open, and left idle
        await asyncio.sleep(0.5)
        ended = (await asyncio.gather(session.execute(text("SELECT 1")), return_exceptions=True))[
            0
        ]
    assert isinstance(ended, Exception)
    if driver == "psycopg":
        assert classify(ended) == FailureReason("idle in transaction timeout", "25P03")
    else:
        # asyncpg drops the server's last word when it comes while nothing is running.
        assert classify(ended) == FailureReason("connection lost")


@pytest.mark.faults
@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_server_gone_mid_session_is_a_lost_connection(
    driver: Driver, own_server: PostgresServer
) -> None:
    router = DatabaseRouter(
        RouterSettings(databases={"primary": {"url": with_driver(own_server.url(), driver)}})
    )
    async with router:
        with pytest.raises(DatabaseUnavailableError) as caught:
            async with router.session() as session:
                await session.execute(text("SELECT 1"))
                await asyncio.to_thread(own_server.stop, "immediate")
                await session.execute(text("SELECT 1"))
    assert caught.value.reason == "connection lost"
    assert classify(caught.value) == FailureReason("connection lost")


@asynccontextmanager
async def held_connection(url: str) -> AsyncIterator[None]:
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": url}}))
    async with router, router.session() as session:
        await session.execute(text("SELECT 1"))
        yield


@pytest.mark.faults
@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_server_shutting_down_says_so(driver: Driver, own_server: PostgresServer) -> None:
    url = with_driver(own_server.url(), driver)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(held_connection(url))
        # A smart shutdown waits for the held session, and meanwhile refuses new ones.
        stopping = asyncio.ensure_future(asyncio.to_thread(own_server.stop, "smart"))
        try:
            for _ in range(200):
                # A router of its own each time: a pooled connection would still answer.
                async with DatabaseRouter(
                    RouterSettings(databases={"primary": {"url": url}})
                ) as router:
                    primary = (await router.check()).databases["primary"]
                if primary.status == "down":
                    break
                await asyncio.sleep(0.05)
        finally:
            await stack.aclose()
            await stopping
    assert (primary.error_kind, primary.sqlstate) == ("shutting down", "57P03")
    assert primary.error == "server shutting down (SQLSTATE 57P03)"


@pytest.mark.faults
@pytest.mark.parametrize("driver", DRIVERS)
async def test_a_standby_without_hot_standby_accepts_no_connection(
    driver: Driver, own_server: PostgresServer, tmp_path: Path
) -> None:
    standby = await asyncio.to_thread(own_server.make_standby, tmp_path / "standby")
    standby.settings["hot_standby"] = "off"
    try:
        await asyncio.to_thread(standby.start)
        router = DatabaseRouter(
            RouterSettings(databases={"primary": {"url": with_driver(standby.url(), driver)}})
        )
        async with router:
            report = await router.check()
    finally:
        standby.cleanup()
    health = report.databases["primary"]
    assert (health.error_kind, health.sqlstate) == ("not accepting connections", "57P03")
    assert health.error == "server not accepting connections (SQLSTATE 57P03)"


# ---- this side's limits ---------------------------------------------------------------


async def test_an_exhausted_pool_and_connection_budget_say_so(pg_url: str, pg_url_2: str) -> None:
    busy = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.3, "connect_timeout": 1}
    router = DatabaseRouter(
        RouterSettings(databases={"primary": {"url": pg_url, **busy}, "other": {"url": pg_url_2}})
    )
    async with router, router.session() as session:
        await session.execute(text("SELECT 1"))
        report = await router.check()
    primary = report.databases["primary"]
    assert (primary.status, primary.error_kind) == ("down", "pool exhausted")
    assert primary.error == "no pooled connection free within pool_timeout"
    assert primary.pool.in_use == 1
    assert report.databases["other"].status == "up"

    budget = {"pool_timeout": 0.3, "connect_timeout": 1}
    router = DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": pg_url, **budget}, "other": {"url": pg_url_2, **budget}},
            max_connections=1,
        )
    )
    async with router, router.session() as session:
        await session.execute(text("SELECT 1"))
        report = await router.check()
    other = report.databases["other"]
    assert (other.status, other.error_kind, other.error) == (
        "down",
        "connection budget exhausted",
        "max_connections reached",
    )


async def test_an_unavailable_error_says_why_through_its_cause() -> None:
    router = DatabaseRouter(
        RouterSettings(databases={"primary": {"url": f"postgresql://a:b@{HOST}:{free_port()}/x"}})
    )
    async with router:
        with pytest.raises(DatabaseUnavailableError) as caught:
            async with router.session() as session:
                await session.execute(text("SELECT 1"))
    assert caught.value.reason == "unreachable"
    assert classify(caught.value) == FailureReason("unreachable")
    assert as_unavailable(caught.value, "primary") is caught.value
    no_replica = DatabaseUnavailableError("replica", "no replica is in rotation")
    assert classify(no_replica).text == "no replica is in rotation"


async def test_a_sqlite_file_that_cannot_open_is_another_error(tmp_path: Path) -> None:
    missing = tmp_path / "no such directory" / "app.db"
    router = DatabaseRouter(RouterSettings(databases={"primary": {"url": f"sqlite:///{missing}"}}))
    async with router:
        report = await router.check()
    primary = report.databases["primary"]
    assert (primary.error_kind, primary.sqlstate) == ("other", None)
    assert primary.error == "other error: OperationalError"
