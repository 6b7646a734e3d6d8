"""One server connection per physical database, shared during a test by every engine that
reaches that database, inside one outer transaction that is rolled back when the test ends.

An engine in a test does not get connections of its own: each connection its pool opens
is a `SharedConnectionProxy`, which SQLAlchemy's asyncpg adapter takes for an asyncpg
connection. Every transaction the adapter begins on it is a `Unit`, a savepoint on the
shared connection; committing releases it, rolling back rolls back to it. So application
code that commits works, sees its own writes from every engine of the database (a replica
that mirrors its primary included), and leaves nothing behind.

Savepoints nest: sessions that overlap on one database must end in the reverse order they
began, as they do when an endpoint's session opens inside a test's session. A unit that
would interleave with an open one it did not start inside (two sibling tasks, a health
check pinging databases at once) waits for its turn instead. Which units a task started
inside is tracked in a ContextVar, so a request served by a child task still nests inside
the session of the test that sent it.

Run-time parameters a transaction sets with ``SET LOCAL`` (a schema tenant's
``search_path``) would outlive a released savepoint; they are put back when a unit ends,
as the end of a real transaction would. A commit checks deferred constraints, as a real
one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import OrderedDict
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .errors import IsolationError

if TYPE_CHECKING:
    import asyncpg

__all__ = ["SharedConnection", "SharedConnectionProxy", "SharedConnections", "Unit"]

_OPEN_UNITS: ContextVar[tuple[Unit, ...]] = ContextVar("dbrouter_testing_units", default=())
_SEARCH_PATH = "SELECT current_setting('search_path')"
_CHECK = "dbrouter_check"
_PREPARED = 512  # statements kept prepared per connection
_LOOPS = (
    "run the tests and dbrouter's fixtures on one event loop for the session: set "
    'asyncio_default_fixture_loop_scope = "session" and asyncio_default_test_loop_scope = '
    '"session" in the pytest configuration'
)


class Unit:
    """One transaction of one engine connection, made a savepoint of the shared one.

    It is what SQLAlchemy's asyncpg adapter holds as its transaction, through the same
    three calls as asyncpg's own: `start`, `commit` and `rollback`.
    """

    __slots__ = ("name", "read_only", "search_path", "shared")

    def __init__(self, shared: SharedConnection, name: str, *, read_only: bool) -> None:
        self.shared = shared
        self.name = name
        self.read_only = read_only
        """Whether the savepoint is read-only (a replica's session)."""
        self.search_path: str | None = None
        """The enclosing unit's search path, put back when this one is released."""

    async def start(self) -> None:
        """Begin the savepoint (and the test's transaction, the first time)."""
        await self.shared.begin(self)

    async def commit(self) -> None:
        """Release the savepoint: its writes join the test's transaction."""
        await self.shared.end(self, commit=True)

    async def rollback(self) -> None:
        """Roll back to the savepoint and release it."""
        await self.shared.end(self, commit=False)


class SharedConnection:
    """The one server connection to a physical database during the tests.

    *key* names the database (``user@host:port/name``, no password) in messages, *params*
    are asyncpg's connect arguments. It connects on first use and stays open between
    tests; `activate` and `finish` frame each test's transaction. A unit that has to wait
    for its turn waits at most *wait* seconds.
    """

    def __init__(self, key: str, params: dict[str, Any], *, wait: float = 10.0) -> None:
        self.key = key
        self._params = params
        self._wait = wait
        self._raw: asyncpg.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._active = False
        self._begun = False
        self._units: list[Unit] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._names: Iterator[int] = itertools.count(1)
        self._statement = asyncio.Lock()
        self._prepared: OrderedDict[str, Any] = OrderedDict()

    @property
    def connected(self) -> bool:
        """Whether the server connection is open."""
        return self._raw is not None and not self._raw.is_closed()

    @property
    def server_connection(self) -> asyncpg.Connection:
        """The server connection, which must be open (see `connection`)."""
        if self._raw is None:
            raise IsolationError(f"{self.key} is not connected")
        return self._raw

    @property
    def open_units(self) -> int:
        """Savepoints begun and not ended yet."""
        return len(self._units)

    def activate(self) -> None:
        """A test begins: units may start."""
        self._active = True

    def unit(self, *, read_only: bool) -> Unit:
        """A new unit (not started) on this connection."""
        return Unit(self, f"dbrouter_{next(self._names)}", read_only=read_only)

    async def connection(self) -> asyncpg.Connection:
        """The server connection, opened on first use (or again after it was lost)."""
        self._check_loop()
        if self._raw is None or self._raw.is_closed():
            import asyncpg

            self._raw = await asyncpg.connect(**self._params)
            self._loop = asyncio.get_running_loop()
            self._begun = False
            self._prepared.clear()
        return self._raw

    async def prepare(self, query: str, *, timeout: float | None = None) -> Any:
        """*query* prepared on the server connection, once for every engine and test.

        Each test's engines are new, and so are the statement caches of their
        connections: without this, every statement of every test would be prepared again,
        a round trip each.
        """
        prepared = self._prepared.get(query)
        if prepared is not None:
            self._prepared.move_to_end(query)
            return prepared
        prepared = await self.server_connection.prepare(query, timeout=timeout)
        self._prepared[query] = prepared
        if len(self._prepared) > _PREPARED:
            self._prepared.popitem(last=False)
        return prepared

    def forget_prepared(self) -> None:
        """Prepare every statement again: the schema changed (DDL), so their plans may
        be stale."""
        self._prepared.clear()

    async def begin(self, unit: Unit) -> None:
        """Start *unit* once its turn comes: nested in an open unit the caller started
        inside, or after any other open unit ends."""
        self._check_loop()
        self._check_active()
        while True:
            await self._take_turn()
            # Starting and ending take turns too: a savepoint must not be sent while
            # another one is being begun or released on the same connection.
            async with self._statement:
                if not self._my_turn():
                    continue  # another unit began meanwhile: wait for it
                raw = await self.connection()
                script = [] if self._begun else ["BEGIN"]
                script.append(f"SAVEPOINT {unit.name}")
                if unit.read_only:
                    script.append("SET TRANSACTION READ ONLY")
                try:
                    await raw.execute("; ".join(script))
                except Exception:
                    if self._begun or not raw.is_closed():
                        raise
                    # Lost since the last test (a server restart): a test begins anew.
                    raw = await self.connection()
                    await raw.execute("; ".join(script))
                self._begun = True
                if self._units:
                    unit.search_path = await raw.fetchval(_SEARCH_PATH)
                self._units.append(unit)
                _OPEN_UNITS.set((*_OPEN_UNITS.get(), unit))
                return

    async def end(self, unit: Unit, *, commit: bool) -> None:
        """Release *unit* (*commit*) or roll back to it; the innermost unit only."""
        if unit not in self._units:
            if commit:
                raise IsolationError(
                    f"a transaction on {self.key} was committed after its test ended; "
                    "nothing a test writes survives it"
                )
            return  # the test's end rolled it back already
        if self._units[-1] is not unit:
            raise IsolationError(
                f"two sessions on {self.key} overlap out of order: the one that began first "
                "ended while the other is still open. In tests every session of a database "
                "shares one connection, each transaction a savepoint of the test's, so "
                "sessions that overlap must end in the reverse order they began"
            )
        raw = self._raw
        assert raw is not None
        async with self._statement:
            try:
                if commit:
                    await raw.execute(self._release(unit))
                else:
                    await raw.execute(_rollback(unit))
            except BaseException:
                if commit and not raw.is_closed():
                    # A failed commit ends the transaction, as it does outside tests.
                    with contextlib.suppress(Exception):
                        await raw.execute(_rollback(unit))
                raise
            finally:
                self._units.remove(unit)
                _OPEN_UNITS.set(tuple(u for u in _OPEN_UNITS.get() if u is not unit))
                self._wake()

    async def finish(self) -> None:
        """The test ends: roll back its transaction; units still open end with it."""
        self._active = False
        self._units.clear()
        self._wake()
        raw = self._raw
        if not self._begun or raw is None or raw.is_closed():
            self._begun = False
            return
        self._begun = False
        try:
            await raw.execute("ROLLBACK")
        except Exception:
            # Whatever state it is in, a new connection is the way back to a clean one.
            raw.terminate()
            self._raw = None

    async def close(self) -> None:
        """Close the server connection (the transaction of a test ends with it)."""
        raw, self._raw = self._raw, None
        self._units.clear()
        self._begun = False
        if raw is None or raw.is_closed():
            return
        if self._loop is not asyncio.get_running_loop():
            # Opened on a loop of its own, which may be gone: no goodbye to the server.
            with contextlib.suppress(RuntimeError):
                raw.terminate()
            return
        try:
            await raw.close(timeout=5)
        except Exception:
            raw.terminate()

    def _release(self, unit: Unit) -> str:
        # Deferred constraints are checked as a real commit checks them: made immediate in
        # a savepoint of their own, rolled back so that later transactions defer again.
        check = (
            f"SAVEPOINT {_CHECK}; SET CONSTRAINTS ALL IMMEDIATE; ROLLBACK TO SAVEPOINT {_CHECK}; "
            f"RELEASE SAVEPOINT {_CHECK}; RELEASE SAVEPOINT {unit.name}"
        )
        if len(self._units) == 1:
            # What the transaction SET LOCAL ends with it: back to the connection's defaults.
            return f"{check}; RESET ALL"
        path = (unit.search_path or "").replace("'", "''")
        return f"{check}; SELECT set_config('search_path', '{path}', true)"

    def _my_turn(self) -> bool:
        return not self._units or self._units[-1] in _OPEN_UNITS.get()

    async def _take_turn(self) -> None:
        if self._my_turn():
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        while not self._my_turn():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise IsolationError(
                    f"a session on {self.key} waited {self._wait:g} s for another one to end: "
                    "in tests every session of a database shares one connection, and a "
                    "session that overlaps one it was not opened inside waits for it. Does "
                    "the code under test wait, with a session open, for a task that needs "
                    "another session on the same database?"
                )
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait((waiter,), timeout=remaining)
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            self._check_active()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _check_active(self) -> None:
        if not self._active:
            raise IsolationError(
                f"{self.key} was used outside a test: in tests, dbrouter's databases are "
                "reached through the dbrouter fixtures (dbrouter, dbrouter_client, ...), each "
                "test in a transaction of its own"
            )

    def _check_loop(self) -> None:
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            raise IsolationError(f"{self.key} was opened on another event loop; {_LOOPS}")


def _rollback(unit: Unit) -> str:
    return f"ROLLBACK TO SAVEPOINT {unit.name}; RELEASE SAVEPOINT {unit.name}"


class SharedConnectionProxy:
    """What an engine's DBAPI connection holds in place of an asyncpg connection of its
    own: the shared connection, whose transactions are units and which is never closed
    by the engine. *read_only* makes every unit read-only (a replica's connections)."""

    __slots__ = ("_read_only", "_shared")

    def __init__(self, shared: SharedConnection, *, read_only: bool) -> None:
        self._shared = shared
        self._read_only = read_only

    def transaction(
        self, *, isolation: str | None = None, readonly: bool = False, deferrable: bool = False
    ) -> Unit:
        """A unit where asyncpg would begin a transaction."""
        if isolation not in (None, "read_committed"):
            raise IsolationError(
                f"a transaction on {self._shared.key} asks for isolation level {isolation!r}: "
                "in tests every session of a database is a savepoint of the test's own "
                "transaction, which is read committed; leave the isolation level at its "
                "default in tests"
            )
        return self._shared.unit(read_only=self._read_only or readonly)

    def is_closed(self) -> bool:
        """Whether the shared connection is closed."""
        return not self._shared.connected

    async def close(self, *, timeout: float | None = None) -> None:
        """Nothing: the shared connection stays open for the other engines."""

    def terminate(self) -> None:
        """Nothing: the shared connection stays open for the other engines."""

    async def prepare(
        self,
        query: str,
        *,
        name: str | None = None,
        timeout: float | None = None,
        record_class: Any = None,
    ) -> Any:
        """A prepared statement, shared with the other engines when it is an ordinary one."""
        if name is not None or record_class is not None:
            return await self._shared.server_connection.prepare(
                query, name=name, timeout=timeout, record_class=record_class
            )
        return await self._shared.prepare(query, timeout=timeout)

    async def reload_schema_state(self) -> None:
        """Forget the types and the shared prepared statements: the schema changed."""
        self._shared.forget_prepared()
        await self._shared.server_connection.reload_schema_state()

    def __getattr__(self, name: str) -> Any:
        # The server connection of now: it is made again when a test finds it lost.
        return getattr(self._shared.server_connection, name)


class SharedConnections:
    """Every shared connection of a test session, by database key."""

    def __init__(self, *, wait: float = 10.0) -> None:
        self._wait = wait
        self._connections: dict[str, SharedConnection] = {}
        self.dialects: dict[str, dict[str, Any]] = {}
        """What SQLAlchemy's dialects learnt from the servers, by driver and server: kept
        here, with the connections, for the whole session."""

    def get(self, key: str, params: dict[str, Any]) -> SharedConnection:
        """The shared connection to *key*, made with *params* the first time."""
        shared = self._connections.get(key)
        if shared is None:
            shared = self._connections[key] = SharedConnection(key, params, wait=self._wait)
        return shared

    def __iter__(self) -> Iterator[SharedConnection]:
        return iter(list(self._connections.values()))

    async def close(self, key: str) -> None:
        """Close the connection to *key*, if any (before its database is dropped)."""
        shared = self._connections.pop(key, None)
        if shared is not None:
            await shared.close()

    async def close_all(self) -> None:
        """Close every connection."""
        for key in list(self._connections):
            await self.close(key)
