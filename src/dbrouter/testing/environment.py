"""A test session's databases: the application's router taken over, its databases placed
on the test servers and made ready, the connections the tests share, and what each test
gets from them."""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ..errors import ConfigurationError
from ..router import DatabaseRouter
from ..settings import RouterSettings
from ..urls import render
from .isolation import Declaration, Isolation
from .placement import place
from .preparation import caught_up, create_places, create_tables, migrate, places
from .sharing import SharedConnections
from .takeover import RouterTakeover

__all__ = ["TestEnvironment"]


class TestEnvironment:
    """Everything the tests of one session share.

    `open` takes the application's *router* over, places its databases on *server* (its
    replicas on *standby*, when there is one), creates what is missing and its tables,
    and keeps one connection per physical database for the tests to share. Each test gets
    an `isolation` and the router rebuilt for it (`router_for`). `close` closes the
    connections.
    """

    __test__ = False  # a class of the toolkit, not a test

    def __init__(
        self,
        takeover: RouterTakeover,
        settings: RouterSettings,
        *,
        server: URL,
        standby: URL | None,
        metadata: MetaData | None = None,
    ) -> None:
        self.takeover = takeover
        self.settings = settings
        """The application's configuration, placed on the test servers."""
        self.server = server
        self.standby = standby
        self.metadata = metadata
        """Tables created in every database and tenant, when no migrations do it."""
        self.connections = SharedConnections()
        self._admin: DatabaseRouter | None = None

    @classmethod
    async def open(
        cls,
        router: DatabaseRouter,
        *,
        server: str,
        standby: str | None = None,
        metadata: MetaData | None = None,
    ) -> TestEnvironment:
        """The environment of *router*'s tests on the servers *server* and *standby*."""
        takeover = RouterTakeover(router)
        server_url = _server_url(server, "dbrouter_postgres_url")
        standby_url = None if standby is None else _server_url(standby, "dbrouter_standby_url")
        environment = cls(
            takeover,
            place(takeover.original, server_url, standby_url),
            server=server_url,
            standby=standby_url,
            metadata=metadata,
        )
        await create_places(environment.settings, server_url)
        await migrate(environment.admin)
        if metadata is not None:
            await create_tables(metadata, list(places(environment.settings)))
        if standby_url is not None:
            await caught_up(server_url, standby_url)
        return environment

    @property
    def router(self) -> DatabaseRouter:
        """The application's router (as the last test left it)."""
        return self.takeover.router

    @property
    def admin(self) -> DatabaseRouter:
        """A router of the placed configuration whose engines are the servers' own, outside
        any test: for creating and dropping tenants and for migrations."""
        if self._admin is None or self._admin.closed:
            takeover = self.takeover
            self._admin = DatabaseRouter(
                self.settings,
                tenant_resolver=takeover._resolver,
                tenant_catalog=takeover._catalog,
            )
        return self._admin

    def isolation(
        self, *, mirror: bool = True, declaration: Declaration | None = None
    ) -> Isolation:
        """A new test's isolation."""
        if not mirror and self.standby is None:
            raise ConfigurationError(
                "this test reads from the real standby (@pytest.mark.dbrouter(mirror=False)) "
                "and no standby is configured: name a streaming standby of the test server "
                "with --dbrouter-standby-url, DBROUTER_TEST_STANDBY_URL or the "
                "dbrouter_standby_url option"
            )
        return Isolation(self.connections, mirror=mirror, declaration=declaration)

    def router_for(self, isolation: Isolation) -> DatabaseRouter:
        """The application's router, rebuilt for the test of *isolation*."""
        return self.takeover.rebuild(self.settings, isolation)

    async def close(self) -> None:
        """Close the shared connections and the admin router's engines."""
        await self.connections.close_all()
        if self._admin is not None:
            await self._admin.dispose()

    def describe(self) -> str:
        """Where the tests' databases are, for the report header (no password)."""
        where = f"dbrouter: databases on {render(self.server)}"
        if self.standby is not None:
            where += f", replicas on {render(self.standby)}"
        return where


def _server_url(value: str, option: str) -> URL:
    try:
        url = make_url(value)
    except ArgumentError:
        raise ConfigurationError(f"{option}: not a URL SQLAlchemy can read") from None
    if url.get_backend_name() != "postgresql":
        raise ConfigurationError(
            f"{option}: the test server must be PostgreSQL, not {url.get_backend_name()!r}"
        )
    return url
