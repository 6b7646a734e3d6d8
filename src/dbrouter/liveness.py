"""Liveness of pooled connections without a round trip per checkout: ``pool_pre_ping: idle``.

SQLAlchemy's ``pool_pre_ping`` sends a query on every checkout. Most checkouts do not need
it: a connection returned a moment ago is very unlikely to be dead, and one the server
closed (a restart, a crash, a terminated backend) is usually known closed by the driver
already, because the server's goodbye or the socket's end reached the event loop while the
connection sat in the pool. So a checkout here

1. takes a connection the driver knows is closed as a disconnect, at no cost (asyncpg
   reads its socket all along and knows);
2. pings a connection whose socket has something to read while it sat idle (psycopg
   reads nothing while idle: the server's goodbye waits there), asked without blocking;
3. pings a connection idle for longer than ``pre_ping_idle_after`` (the one that may have
   been dropped silently: a firewall's or NAT's idle timeout);
4. hands out every other connection as it is.

A disconnect found either way invalidates the whole pool, as SQLAlchemy's own pre-ping
does: every connection opened before it is replaced at its next checkout, without a ping,
so after a server restart no request meets a connection from before it. A disconnect met
by a statement invalidates the pool too (SQLAlchemy's ``invalidate_pool_on_disconnect``).
"""

from __future__ import annotations

import select
import time
from typing import Any, Literal

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

__all__ = ["IDLE_SINCE_KEY", "ConnectionState", "connection_state", "ping_when_idle"]

ConnectionState = Literal["closed", "suspect", "fine"]
"""What can be told of an idle connection without I/O: known closed, something arrived
on it while idle, or nothing to say against it."""

IDLE_SINCE_KEY = "dbrouter_idle_since"
"""The key, in a pooled connection's ``info``, of when it was last checked in."""


def ping_when_idle(engine: Engine, idle_after: float) -> None:
    """Make checkouts of *engine*'s pool test a connection only when the driver knows it
    is closed or it was idle for more than *idle_after* seconds (see the module)."""
    dialect = engine.dialect

    def checked_in(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:  # an invalidated one reconnects on checkout anyway
            record.info[IDLE_SINCE_KEY] = time.monotonic()

    def checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        idle_since = record.info.pop(IDLE_SINCE_KEY, None)
        if idle_since is None:
            return  # connected just now, for this checkout
        state = connection_state(dbapi_connection)
        if state == "closed":
            raise sa_exc.InvalidatePoolError("the driver reports the connection closed")
        if state == "fine" and time.monotonic() - idle_since <= idle_after:
            return
        try:
            alive = dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if dialect.is_disconnect(error, dbapi_connection, None):
                raise sa_exc.InvalidatePoolError("the ping found the connection lost") from error
            raise
        if not alive:
            raise sa_exc.InvalidatePoolError("the ping found the connection lost")

    event.listen(engine, "checkin", checked_in)
    event.listen(engine, "checkout", checked_out)


def connection_state(dbapi_connection: Any) -> ConnectionState:
    """What can be told of the idle *dbapi_connection* without I/O (see `ConnectionState`).

    asyncpg notices a server's goodbye while the connection is idle (``is_closed()``).
    psycopg reads nothing while idle: its ``closed`` changes only on use, but the goodbye
    (or anything else) waiting on its socket shows in a non-blocking poll.
    """
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is None:
        return "fine"
    is_closed = getattr(driver, "is_closed", None)
    if callable(is_closed):
        return "closed" if is_closed() else "fine"
    if getattr(driver, "closed", False) is True:
        return "closed"
    pgconn = getattr(driver, "pgconn", None)
    if pgconn is None:
        return "fine"
    try:
        socket = pgconn.socket
    except Exception:
        return "closed"  # libpq has no connection any more
    return "suspect" if _readable(socket) else "fine"


def _readable(fd: int) -> bool:
    if hasattr(select, "poll"):  # any descriptor number, unlike select()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)
