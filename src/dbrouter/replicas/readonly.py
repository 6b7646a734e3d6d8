"""Read-only sessions: every transaction is opened read-only by the server itself.

With asyncpg the transaction starts as ``BEGIN READ ONLY``: asyncpg sends ``BEGIN`` with
the first statement, and the connection is marked read-only just before (SQLAlchemy's
``set_readonly``), so there is no extra statement and no extra round trip; the mark is
lifted when the connection goes back to the pool.

A replica's sessions use them wherever they land, the primary included when reads fall
back to it: a write fails with a clear error and changes nothing. On a replica's own
servers the connections are read-only from the moment they open, so its sessions there
need no per-transaction step at all.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction

from ..databases import GuardedSession
from ..errors import ReadOnlySessionError
from ..settings import DatabaseSettings
from ..urls import is_postgresql, is_sqlite

__all__ = [
    "ReplicaSession",
    "make_connections_read_only",
    "read_only_by_connection",
    "read_only_sessionmaker",
]

_QUERY_ONLY = "dbrouter_query_only"
_READ_ONLY = "dbrouter_read_only"


_READ_ONLY_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


class ReplicaSession(GuardedSession):
    """A replica session: read-only wherever it lands, ORM flushes refused before any SQL.

    On a replica's own servers the connections are read-only already (see
    `read_only_by_connection`); elsewhere (the primary, when reads fall back to it) each
    transaction is opened read-only. A transaction whose first connection cannot be made
    moves to another server when the session knows one (`fail_over`).
    """

    fail_over: Callable[[BaseException], Engine | None] | None = None
    """Given the error that reaching this session's server raised, another server's (sync)
    engine for the session, or None to let the error stand."""

    def _connection_for_bind(
        self, engine: Any, execution_options: Any = None, **kw: Any
    ) -> Connection:
        try:
            return super()._connection_for_bind(engine, execution_options, **kw)
        except Exception as exc:
            fail_over = self.fail_over
            transaction = self.get_transaction()
            # Only before the transaction has read anything: it must see one server.
            if fail_over is None or transaction is None or transaction._connections:
                raise
            other = fail_over(exc)
            if other is None:
                raise
            return super()._connection_for_bind(other, execution_options, **kw)


@event.listens_for(ReplicaSession, "after_begin")
def _begin_read_only(
    session: Session, transaction: SessionTransaction, connection: Connection
) -> None:
    if connection.engine in _READ_ONLY_ENGINES:
        return  # read-only since it connected
    dialect = connection.dialect
    pooled = connection.connection
    if dialect.name == "sqlite":
        # SQLite has no read-only transactions; query_only lasts until the pool resets it.
        connection.exec_driver_sql("PRAGMA query_only = ON")
        pooled.info[_QUERY_ONLY] = True
    elif getattr(pooled.dbapi_connection, "autocommit", False):
        # AUTOCOMMIT opens no transaction that could be marked read-only: every statement
        # would commit on its own, writes included.
        raise ReadOnlySessionError(
            "this session is read-only (it reads from a replica) and cannot run with "
            "isolation_level='AUTOCOMMIT'; use any other isolation level"
        )
    elif dialect.driver == "asyncpg":
        dialect.set_readonly(pooled.dbapi_connection, True)  # type: ignore[attr-defined]
        pooled.info[_READ_ONLY] = True
    else:
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")


@event.listens_for(ReplicaSession, "before_flush")
def _refuse_flush(session: Session, flush_context: Any, instances: Any) -> None:
    if session.new or session.dirty or session.deleted:
        raise ReadOnlySessionError(
            "this session is read-only (it reads from a replica): write through a session "
            "on the primary instead"
        )


def read_only_by_connection(settings: DatabaseSettings) -> bool:
    """Whether every connection of the database with *settings* is read-only from the
    start: a replica reached over asyncpg or SQLite.

    asyncpg asks for ``default_transaction_read_only`` when it connects (not through
    PgBouncer, which refuses unknown startup parameters); SQLite connections get
    ``PRAGMA query_only``. Every transaction on them is read-only, AUTOCOMMIT included,
    at no cost per session.
    """
    url = settings.url
    if settings.replica_of is None:
        return False
    if is_sqlite(url):
        return True
    return is_postgresql(url) and url.get_driver_name() == "asyncpg" and not settings.pgbouncer


def make_connections_read_only(engine: AsyncEngine, settings: DatabaseSettings) -> None:
    """Note *engine* as read-only from the start (asyncpg's part is a connect argument,
    see `dbrouter.engines`), and make SQLite connections so as they open."""
    if is_sqlite(settings.url):
        event.listen(engine.sync_engine, "connect", _query_only)
    _READ_ONLY_ENGINES.add(engine.sync_engine)


def _query_only(dbapi_connection: Any, record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA query_only = ON")
    finally:
        cursor.close()


def read_only_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Replica sessions on *engine*, a replica's server or the primary they fall back to."""
    if engine.sync_engine not in _READ_ONLY_ENGINES and not event.contains(
        engine.sync_engine, "reset", _lift_read_only
    ):
        event.listen(engine.sync_engine, "reset", _lift_read_only)
    return async_sessionmaker(
        engine,
        class_=AsyncSession,
        sync_session_class=ReplicaSession,
        autoflush=False,
        expire_on_commit=False,
    )


def _lift_read_only(dbapi_connection: Any, record: Any, reset_state: Any) -> None:
    if record.info.pop(_READ_ONLY, False):
        dbapi_connection.readonly = False  # what the asyncpg dialect's set_readonly sets
    if record.info.pop(_QUERY_ONLY, False):
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA query_only = OFF")
        finally:
            cursor.close()
