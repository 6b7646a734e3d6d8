"""The pytest plugin of dbrouter (entry point ``dbrouter``): fixtures that run each test of
an application against real databases, isolated across every database and tenant.

This module is all pytest loads in every project where the package is installed, so it
imports nothing but pytest: options, a marker and fixture definitions. No fixture runs,
no server starts and no application is imported until a test asks for a ``dbrouter``
fixture; the work is done by `dbrouter.testing`. See docs/testing.md.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import pytest

try:
    import pytest_asyncio
except ImportError:  # the testing extra is not installed: the fixtures say so when used
    pytest_asyncio = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import httpx
    from sqlalchemy import MetaData

    from dbrouter import DatabaseRouter
    from dbrouter.testing.client import AppClients
    from dbrouter.testing.environment import TestEnvironment
    from dbrouter.testing.isolation import Isolation
    from dbrouter.testing.tenants import ThrowawayTenants

__all__ = [
    "dbrouter",
    "dbrouter_app",
    "dbrouter_client",
    "dbrouter_clients",
    "dbrouter_environment",
    "dbrouter_isolation",
    "dbrouter_metadata",
    "dbrouter_postgres_url",
    "dbrouter_router",
    "dbrouter_session_tenants",
    "dbrouter_standby_url",
    "dbrouter_tenant_client",
    "dbrouter_tenants",
    "pytest_addoption",
    "pytest_configure",
    "pytest_runtest_makereport",
]

_MISSING = 'the dbrouter fixtures need the testing extra: pip install "fastapi-dbrouter[testing]"'
_OPTIONS = {
    "dbrouter_app": "module:attribute of the FastAPI app under test (myapp.main:app)",
    "dbrouter_router": "module:attribute of the app's DatabaseRouter (default: the router "
    "whose lifespan the app runs)",
    "dbrouter_postgres_url": "PostgreSQL server the tests use, a role that may create "
    "databases (also $DBROUTER_TEST_POSTGRES_URL); default: a throwaway server",
    "dbrouter_standby_url": "a streaming standby of that server, for tests marked "
    "dbrouter(mirror=False) (also $DBROUTER_TEST_STANDBY_URL)",
    "dbrouter_metadata": "module:attribute of the SQLAlchemy MetaData (or declarative base) "
    "whose tables are created in every database and tenant, where no migrations do it",
}
_MARKER = (
    "dbrouter(databases=[...], tenants=[...], mirror=True): the databases and tenants a "
    "test of dbrouter's fixtures may touch (declaring turns the guard on), and whether its "
    "replicas mirror their primary"
)

F = TypeVar("F", bound=Callable[..., Any])


def pytest_addoption(parser: pytest.Parser) -> None:
    """The plugin's options, on the command line and in the configuration file."""
    group = parser.getgroup("dbrouter", "dbrouter: the databases of the application under test")
    for name, text in _OPTIONS.items():
        group.addoption(f"--{name.replace('_', '-')}", dest=name, default=None, help=text)
        parser.addini(name, text)
    parser.addini(
        "dbrouter_guard",
        "every test may touch only the databases its dbrouter marker declares "
        "(default: the default database)",
        type="bool",
        default=False,
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``dbrouter`` marker."""
    config.addinivalue_line("markers", _MARKER)


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Note whether a test of the dbrouter fixtures failed, for its guard to tell."""
    report = yield
    if call.when == "call" and "dbrouter_isolation" in getattr(item, "fixturenames", ()):
        item.stash[_CALL_FAILED] = report.failed
    return report


def _session_loop_fixture(scope: Literal["session", "function"] = "function") -> Callable[[F], F]:
    """An async fixture on pytest-asyncio's session loop, where every connection the tests
    share lives; without pytest-asyncio, a fixture that says what to install."""

    def decorate(function: F) -> F:
        if pytest_asyncio is not None:
            fixture: Any = pytest_asyncio.fixture(function, scope=scope, loop_scope="session")
            return typing.cast(F, fixture)

        @functools.wraps(function)
        def missing(*args: Any, **kwargs: Any) -> Any:
            pytest.fail(_MISSING, pytrace=False)

        return typing.cast(F, pytest.fixture(missing, scope=scope))

    return decorate


@pytest.fixture(scope="session")
def dbrouter_postgres_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """The URL of the PostgreSQL server the tests use: the one configured
    (``dbrouter_postgres_url``), or a throwaway server started now for the session."""
    from dbrouter.testing.config import PluginOptions

    configured = PluginOptions.of(pytestconfig).postgres_url
    if configured is not None:
        yield configured
        return
    from dbrouter.testing.postgres import running_server

    with running_server() as server:
        yield server.url()


@pytest.fixture(scope="session")
def dbrouter_standby_url(pytestconfig: pytest.Config) -> str | None:
    """The URL of a streaming standby of the test server (``dbrouter_standby_url``), or
    None: replicas then always mirror their primary."""
    from dbrouter.testing.config import PluginOptions

    return PluginOptions.of(pytestconfig).standby_url


@pytest.fixture(scope="session")
def dbrouter_app(pytestconfig: pytest.Config) -> Any:
    """The FastAPI app under test (``dbrouter_app``), imported on first use; None when
    none is configured. Override it to build the app yourself."""
    from dbrouter.testing.config import PluginOptions, load

    path = PluginOptions.of(pytestconfig).app
    return None if path is None else load(path, "dbrouter_app")


@pytest.fixture(scope="session")
def dbrouter_router(pytestconfig: pytest.Config, dbrouter_app: Any) -> DatabaseRouter:
    """The application's own router (``dbrouter_router``, or the one whose lifespan the app
    runs). Every test gets it rebuilt on the test databases as ``dbrouter``. Override it
    to name the router yourself."""
    from dbrouter.testing.config import PluginOptions, find_router

    return find_router(PluginOptions.of(pytestconfig), dbrouter_app)


@pytest.fixture(scope="session")
def dbrouter_metadata(pytestconfig: pytest.Config) -> MetaData | None:
    """The SQLAlchemy metadata whose tables are created in every database and tenant
    (``dbrouter_metadata``), or None where migrations create them. Override it to give
    the metadata yourself."""
    from dbrouter.testing.config import PluginOptions
    from dbrouter.testing.preparation import load_metadata

    path = PluginOptions.of(pytestconfig).metadata
    return None if path is None else load_metadata(path)


@_session_loop_fixture(scope="session")
async def dbrouter_environment(
    dbrouter_router: DatabaseRouter,
    dbrouter_postgres_url: str,
    dbrouter_standby_url: str | None,
    dbrouter_metadata: MetaData | None,
) -> AsyncIterator[TestEnvironment]:
    """The databases of the session: the router's configuration placed on the test
    server, missing databases created, migrated (or their tables created from
    ``dbrouter_metadata``); one connection per database, shared by the tests."""
    from dbrouter.testing.environment import TestEnvironment

    environment = await TestEnvironment.open(
        dbrouter_router,
        server=dbrouter_postgres_url,
        standby=dbrouter_standby_url,
        metadata=dbrouter_metadata,
    )
    try:
        yield environment
    finally:
        await environment.close()


@_session_loop_fixture()
async def dbrouter_isolation(
    request: pytest.FixtureRequest,
    pytestconfig: pytest.Config,
    dbrouter_environment: TestEnvironment,
) -> AsyncIterator[Isolation]:
    """The test's isolation: an outer transaction per database it touches, rolled back
    when it ends; replicas mirroring their primary unless its marker says
    ``mirror=False``; the databases its marker declares, when the guard is on."""
    from dbrouter.testing.config import PluginOptions, marks_of

    settings = dbrouter_environment.settings
    marks = marks_of(
        request.node,
        guard=PluginOptions.of(pytestconfig).guard,
        databases=settings.databases,
        default_database=settings.default_database,
    )
    isolation = dbrouter_environment.isolation(mirror=marks.mirror, declaration=marks.declaration)
    try:
        yield isolation
    finally:
        await isolation.finish()
    if isolation.violations and not request.node.stash.get(_CALL_FAILED, False):
        # The test caught the error, or touched the database where nobody looked.
        pytest.fail(str(isolation.violations[0]), pytrace=False)


@_session_loop_fixture()
async def dbrouter(
    dbrouter_environment: TestEnvironment, dbrouter_isolation: Isolation
) -> AsyncIterator[DatabaseRouter]:
    """The application's router, rebuilt for this test on the test databases: what the
    app and every module that imported the router use during the test. Disposed after."""
    router = dbrouter_environment.router_for(dbrouter_isolation)
    try:
        yield router
    finally:
        await router.dispose()


@_session_loop_fixture()
async def dbrouter_clients(
    dbrouter: DatabaseRouter, dbrouter_app: Any
) -> AsyncIterator[AppClients]:
    """The app served in-process with its lifespan run (see ``dbrouter_client``)."""
    from dbrouter.errors import ConfigurationError
    from dbrouter.testing.client import app_client

    if dbrouter_app is None:
        raise ConfigurationError(
            "dbrouter_client: no app is configured; set dbrouter_app = myapp.main:app in "
            "the pytest configuration (or --dbrouter-app), or override the dbrouter_app "
            "fixture"
        )
    async with app_client(dbrouter_app) as clients:
        yield clients


@_session_loop_fixture()
async def dbrouter_tenants(
    dbrouter_environment: TestEnvironment, dbrouter_isolation: Isolation
) -> ThrowawayTenants:
    """Tenants for this test: ``await dbrouter_tenants.create()`` makes one (a new id, or
    the one given) with its tables; each is dropped when the test ends, after its
    transactions are rolled back."""
    from dbrouter.testing.tenants import ThrowawayTenants

    tenants = ThrowawayTenants(dbrouter_environment)
    dbrouter_isolation.afterwards(tenants.drop_all)
    return tenants


@_session_loop_fixture(scope="session")
async def dbrouter_session_tenants(
    dbrouter_environment: TestEnvironment,
) -> AsyncIterator[ThrowawayTenants]:
    """Tenants for the whole session, as ``dbrouter_tenants``: dropped when it ends. What
    each test writes in them is rolled back when the test ends."""
    from dbrouter.testing.tenants import ThrowawayTenants

    tenants = ThrowawayTenants(dbrouter_environment)
    try:
        yield tenants
    finally:
        await tenants.drop_all()


@pytest.fixture
def dbrouter_client(dbrouter_clients: AppClients) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for the app, served in-process on the test's databases,
    with its lifespan run around the test and its ``dependency_overrides`` restored
    after."""
    return dbrouter_clients.client


@pytest.fixture
def dbrouter_tenant_client(
    dbrouter_clients: AppClients, dbrouter: DatabaseRouter
) -> Callable[[str], httpx.AsyncClient]:
    """``dbrouter_tenant_client("acme")``: a client of the app whose requests carry the
    tenant (in the configured tenant header)."""
    tenancy = dbrouter.settings.tenancy
    header = "X-Tenant-ID" if tenancy is None else tenancy.header
    return functools.partial(dbrouter_clients.for_tenant, header=header)
