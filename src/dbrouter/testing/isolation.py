"""A test's isolation: which shared connection each engine of the router reaches, whether
replicas mirror their primary, which databases the test declared, and the rollback of
everything when the test ends."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..settings import DatabaseSettings
from .errors import IsolationError, UndeclaredDatabaseError
from .sharing import SharedConnection, SharedConnectionProxy, SharedConnections

__all__ = ["Binding", "Declaration", "Isolation", "connect_params", "database_key"]

# Arguments SQLAlchemy's asyncpg adapter takes for itself, not asyncpg.connect's.
_ADAPTER_ARGUMENTS = ("prepared_statement_cache_size", "prepared_statement_name_func")


def connect_params(params: dict[str, Any]) -> dict[str, Any]:
    """*params* as asyncpg.connect takes them: without the adapter's own arguments."""
    return {key: value for key, value in params.items() if key not in _ADAPTER_ARGUMENTS}


def database_key(params: Mapping[str, Any]) -> str:
    """The physical database asyncpg connect arguments reach, as ``user@host:port/name``
    (a URL's ``translate_connect_args(username="user")`` gives the same)."""
    return (
        f"{params.get('user') or ''}@{params.get('host') or 'localhost'}:"
        f"{params.get('port') or 5432}/{params.get('database') or ''}"
    )


@dataclass(frozen=True, slots=True)
class Binding:
    """An engine of the router under test: its database's name, kind and settings, and the
    asyncpg connect arguments of its own server."""

    name: str
    kind: str
    settings: DatabaseSettings
    params: dict[str, Any] = field(compare=False)

    @property
    def key(self) -> str:
        """The physical database of its own URL."""
        return database_key(self.params)

    @property
    def database(self) -> str:
        """The configured name it counts as for the guard: ``replica`` for ``replica#2``."""
        return self.name.partition("#")[0]

    def describe(self) -> str:
        """What it is, for messages: ``database 'primary'``, ``tenant 'acme'``."""
        if self.kind == "tenant":
            return f"tenant {self.name.removeprefix('tenant:')!r}"
        return f"database {self.database!r}"


@dataclass(frozen=True, slots=True)
class Declaration:
    """The databases and tenants a test declared; None: any."""

    databases: frozenset[str] | None = None
    tenants: frozenset[str] | None = None

    def allows(self, binding: Binding) -> bool:
        """Whether the test may touch *binding*'s database."""
        if binding.kind == "tenant":
            tenant = binding.name.removeprefix("tenant:")
            return self.tenants is None or tenant in self.tenants
        return self.databases is None or binding.database in self.databases

    def describe(self) -> str:
        """The declared names, for messages."""
        parts = []
        for label, names in (("databases", self.databases), ("tenants", self.tenants)):
            if names is not None:
                parts.append(f"{label} {sorted(names)}")
        return ", ".join(parts) or "nothing"


class Isolation:
    """One test's use of the shared connections.

    Engines of the router under test connect through `connect`: to the shared connection
    of their physical database (their primary's, for a replica that mirrors it), or,
    for a replica that does not mirror, to its own server. `finish` rolls back every
    shared connection the test touched.
    """

    def __init__(
        self,
        connections: SharedConnections,
        *,
        mirror: bool = True,
        declaration: Declaration | None = None,
    ) -> None:
        self._connections = connections
        self.mirror = mirror
        """Whether replicas read their primary's connection (the default)."""
        self.declaration = declaration
        """What the test may touch; None when the guard is off."""
        self.violations: list[UndeclaredDatabaseError] = []
        """Every undeclared database the test touched, even where the error was caught."""
        self._used: dict[str, SharedConnection] = {}
        self._finished = False
        self._afterwards: list[Callable[[], Awaitable[None]]] = []

    @property
    def dialects(self) -> dict[str, dict[str, Any]]:
        """What SQLAlchemy's dialects learnt from the servers, by driver and server (see
        `IsolatingEngineFactory`): the same for every test of the session."""
        return self._connections.dialects

    @property
    def touched(self) -> Collection[str]:
        """The keys of the physical databases the test has touched so far."""
        return self._used.keys()

    async def connect(self, binding: Binding, primary: Binding | None, **params: Any) -> Any:
        """The connection an engine of *binding* gets: a proxy of a shared connection, or
        a real one (a replica's own server when it does not mirror). *primary* is the
        binding of the database a replica replicates; *params* are the engine's asyncpg
        connect arguments."""
        if self._finished:
            raise IsolationError(
                f"{binding.describe()} was used after its test ended: in tests, dbrouter's "
                "databases are reached through the dbrouter fixtures, each test in a "
                "transaction of its own"
            )
        declaration = self.declaration
        if declaration is not None and not declaration.allows(binding):
            error = UndeclaredDatabaseError(binding.describe(), declaration.describe())
            self.violations.append(error)
            raise error
        if primary is not None and not self.mirror:
            import asyncpg

            return await asyncpg.connect(**connect_params(params))
        owner = primary or binding
        shared = self._connections.get(owner.key, connect_params(owner.params))
        if owner.key not in self._used:
            shared.activate()
            self._used[owner.key] = shared
        await shared.connection()
        return SharedConnectionProxy(shared, read_only=primary is not None)

    def afterwards(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run *work* when the test ends, once its transactions are rolled back (the last
        registered first): dropping a tenant made for the test."""
        self._afterwards.append(work)

    async def finish(self) -> None:
        """Roll back everything the test did, on every database it touched; then run what
        was registered with `afterwards`."""
        self._finished = True
        used, self._used = self._used, {}
        try:
            for shared in used.values():
                await shared.finish()
        finally:
            afterwards, self._afterwards = self._afterwards, []
            for work in reversed(afterwards):
                await work()
