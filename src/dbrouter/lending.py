"""Lending a session on a database: the lease, the rollback, the commit, the close.

A plain async context manager rather than a generator-based one: it sits on the path of
every request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import Token
from types import TracebackType
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.util import greenlet_spawn

from .context import enter_tenant, leave_tenant
from .databases import Database, GuardedSession
from .errors import RouterClosedError
from .events import CheckoutTimedOut
from .outages import (
    as_cancelled_statement,
    as_unavailable,
    budget_exhausted,
    classify,
    server_outage,
)
from .replicas.readonly import ReplicaSession
from .settings import TenantSettings

__all__ = ["LentSession", "Route", "SessionMaker", "TenantLentSession", "TenantRouter"]

logger = logging.getLogger("dbrouter")

_ENDED = (
    "this session was lent for a request or an `async with` block that has ended; it "
    "opens no connection any more. Open a new session where the work happens "
    "(`async with router.session(...)` in a background task)"
)

SessionMaker = Callable[[], AsyncSession]
Route = tuple[Database, SessionMaker, Callable[[], None] | None]
"""Where a session goes: the database, how to open a session there, and whom to tell when
the database turns out to be unreachable."""
TenantRouter = Callable[[str, TenantSettings | None], Awaitable[tuple[Database, SessionMaker]]]
"""Says where a session of a tenant goes: given its settings when it was looked up
already, else validating and looking it up first."""

# Routing is retried when the engine found was evicted before a session could lease it.
_ROUTE_ATTEMPTS = 3


class LentSession:
    """``async with`` a session on a database, leased for the block.

    Entering takes a lease on the database (`RouterClosedError` if it is being disposed)
    and opens a session. Leaving rolls back if the block raised, commits if asked to and
    it did not, closes the session and gives the lease back. An outage becomes a
    `DatabaseUnavailableError` (and the route's outage callback is told).
    """

    __slots__ = ("_commit", "_database", "_make", "_on_outage", "_route", "_session")

    def __init__(
        self,
        database: Database | None,
        make_session: SessionMaker | None = None,
        *,
        commit: bool = False,
        route: Callable[[bool], Route | Awaitable[Route]] | None = None,
    ) -> None:
        self._database = database
        self._make = make_session
        self._commit = commit
        self._route = route
        self._on_outage: Callable[[], None] | None = None
        self._session: AsyncSession | None = None

    async def __aenter__(self) -> AsyncSession:
        if self._route is not None:
            route = self._route(True)
            if not isinstance(route, tuple):
                route = await route  # waiting for a replica to catch up
            self._database, self._make, self._on_outage = route
        database = self._database
        assert database is not None
        assert self._make is not None
        if not database.leases.acquire():
            raise RouterClosedError()
        try:
            self._session = session = self._make()
        except BaseException:
            database.leases.release()
            raise
        if self._on_outage is not None:
            sync_session = session.sync_session
            assert isinstance(sync_session, ReplicaSession)
            sync_session.fail_over = self._fail_over
        return session

    def _fail_over(self, error: BaseException) -> Engine | None:
        """Another server for a replica session whose server could not be reached before
        its transaction read anything; None to let *error* stand."""
        database, route = self._database, self._route
        assert database is not None
        if route is None or self._on_outage is None:
            return None
        if not server_outage(error):
            return None  # no connection free here: not the server's fault, nor a reason to go
        self._on_outage()  # out of rotation: routing will not pick it again
        try:
            found = route(False)  # no waiting for a replica to catch up here
        except Exception:
            return None  # nowhere else to go: the original error stands
        if not isinstance(found, tuple):
            return None
        other, _, on_outage = found
        if other is database or not other.leases.acquire():
            return None
        database.leases.release()
        self._database, self._on_outage = other, on_outage
        session = self._session
        assert session is not None
        session.bind = other.engine
        session.sync_session.bind = other.engine.sync_engine
        # Per request: DEBUG. The server leaving rotation is the one WARNING.
        logger.debug("dbrouter: %r unreachable, session moved to %r", database.name, other.name)
        return other.engine.sync_engine

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        session = self._session
        database = self._database
        assert session is not None
        assert database is not None
        sync_session = session.sync_session
        if isinstance(sync_session, GuardedSession):
            sync_session.ending()  # what ends its transaction now ends its use
        try:
            if exc is not None:
                await self._failed(session, database, exc)
            elif self._commit:
                try:
                    await session.commit()
                except BaseException as error:
                    await self._failed(session, database, error)
                    raise
        finally:
            try:
                await _close(session)
            finally:
                database.leases.release()
                if isinstance(sync_session, GuardedSession):
                    sync_session.end(_ENDED)
                if isinstance(sync_session, ReplicaSession):
                    # The hook refers back to this object: left in place, every replica
                    # session would live on in a reference cycle until a collection.
                    sync_session.fail_over = None

    async def _failed(self, session: AsyncSession, database: Database, exc: BaseException) -> None:
        await _rollback_quietly(session)
        events = database.events
        if events is not None and classify(exc).kind == "pool exhausted":
            events.emit(CheckoutTimedOut(database.name))
        unavailable = as_unavailable(exc, database.name)
        if unavailable is None:
            cancelled = as_cancelled_statement(exc, database.name)
            if cancelled is not None:
                raise cancelled from exc  # the server is fine: no outage to report
            return
        if self._on_outage is not None:
            if not budget_exhausted(unavailable):
                self._on_outage()  # a replica server: out of rotation, and it says so
        elif database.availability is not None and server_outage(exc):
            database.availability.lost(unavailable.reason)
        if unavailable is not exc:
            raise unavailable from exc


class TenantLentSession:
    """``async with`` a session on a tenant's data: routed through *route* on entering
    (again if the engine found was evicted before it could be leased), lent as
    `LentSession` lends, with the tenant current (`current_tenant()`) inside.

    *settings* are those of a tenant already validated and looked up (a request's); they
    serve the first routing only, a routing again looks the tenant up afresh. Without
    *current*, making the tenant current is left to the caller.
    """

    __slots__ = ("_commit", "_current", "_lent", "_route", "_settings", "_tenant", "_token")

    def __init__(
        self,
        tenant: str,
        route: TenantRouter,
        *,
        commit: bool = False,
        settings: TenantSettings | None = None,
        current: bool = True,
    ) -> None:
        self._tenant = tenant
        self._route = route
        self._commit = commit
        self._settings = settings
        self._current = current
        self._lent: LentSession | None = None
        self._token: Token[str | None] | None = None

    async def __aenter__(self) -> AsyncSession:
        settings = self._settings
        for attempt in range(_ROUTE_ATTEMPTS):
            database, make_session = await self._route(self._tenant, settings)
            settings = None
            lent = LentSession(database, make_session, commit=self._commit)
            try:
                # No await between routing and the lease: an eviction cannot slip in.
                session = await lent.__aenter__()
            except RouterClosedError:
                if attempt + 1 == _ROUTE_ATTEMPTS:
                    raise
                continue  # evicted between routing and the lease: route again
            break
        self._lent = lent
        if self._current:
            self._token = enter_tenant(self._tenant)
        return session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        lent, token = self._lent, self._token
        assert lent is not None
        try:
            await lent.__aexit__(exc_type, exc, traceback)
        finally:
            if token is not None:
                leave_tenant(token)


async def _close(session: AsyncSession) -> None:
    """Close *session* in this task.

    ``async with session`` closes in a task of its own, shielded from cancellation: a task
    on every request. Here the close runs in place; only a cancellation that interrupts it
    — leaving a connection in the middle of its rollback, still checked out — costs a
    task: the connections the session held are invalidated and handed back to their pools
    there, out of the cancellation's reach, before the cancellation goes on.
    """
    transaction = session.sync_session.get_transaction()
    held = [] if transaction is None else [entry[0] for entry in transaction._connections.values()]
    try:
        await session.close()
    except asyncio.CancelledError:
        await _to_completion(_discard(held))
        raise


async def _discard(connections: list[Connection]) -> None:
    for connection in connections:
        if connection.closed:
            continue
        try:
            await greenlet_spawn(_invalidate_and_close, connection)
        except Exception:
            # Closing a broken connection can fail too; the pool has let go of it already.
            logger.debug("dbrouter: discarding a connection failed", exc_info=True)


def _invalidate_and_close(connection: Connection) -> None:
    connection.invalidate()  # its state is unknown: the pool must not lend it again
    connection.close()


async def _to_completion(work: Coroutine[Any, Any, None]) -> None:
    """Run *work* in a task, and wait for its end however often the waiting is
    cancelled."""
    task = asyncio.get_running_loop().create_task(work)
    while True:
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
        else:
            return


async def _rollback_quietly(session: AsyncSession) -> None:
    # A rollback on a broken connection fails too; the original error is the one to raise,
    # and closing the session invalidates the connection anyway.
    try:
        await session.rollback()
    except Exception:
        logger.debug("dbrouter: rollback failed after an error", exc_info=True)
