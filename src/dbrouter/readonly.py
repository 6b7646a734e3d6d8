"""Read-only sessions: every transaction is opened read-only by the server itself.

With asyncpg the transaction starts as ``BEGIN READ ONLY``: asyncpg sends ``BEGIN`` with
the first statement, and the connection is marked read-only just before (SQLAlchemy's
``set_readonly``), so there is no extra statement and no extra round trip; the mark is
lifted when the connection goes back to the pool.

A replica's sessions use them wherever they land, the primary included when reads fall
back to it: a write fails with a clear error and changes nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction

from .errors import DBRouterError

_QUERY_ONLY = "dbrouter_query_only"
_READ_ONLY = "dbrouter_read_only"


class ReadOnlySessionError(DBRouterError, RuntimeError):
    """A write was attempted through a read-only (replica) session."""


class ReadOnlySession(Session):
    """A session whose transactions are read-only; ORM flushes are refused before any SQL."""


@event.listens_for(ReadOnlySession, "after_begin")
def _begin_read_only(
    session: Session, transaction: SessionTransaction, connection: Connection
) -> None:
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


@event.listens_for(ReadOnlySession, "before_flush")
def _refuse_flush(session: Session, flush_context: Any, instances: Any) -> None:
    if session.new or session.dirty or session.deleted:
        raise ReadOnlySessionError(
            "this session is read-only (it reads from a replica): write through a session "
            "on the primary instead"
        )


def read_only_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Read-only sessions on *engine*, configured like every other dbrouter session."""
    if not event.contains(engine.sync_engine, "reset", _lift_read_only):
        event.listen(engine.sync_engine, "reset", _lift_read_only)
    return async_sessionmaker(
        engine,
        class_=AsyncSession,
        sync_session_class=ReadOnlySession,
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
