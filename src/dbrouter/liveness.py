"""Liveness of pooled connections without a round trip per checkout: ``pool_pre_ping: idle``.

SQLAlchemy's ``pool_pre_ping`` sends a query on every checkout. Most checkouts do not need
it: a connection returned a moment ago is very unlikely to be dead, and one the server
closed (a restart, a crash, a terminated backend) is usually known closed by the driver
already, because the server's goodbye or the socket's end reached the event loop while the
connection sat in the pool. So a checkout here

1. takes a connection the driver knows is closed as a disconnect, at no cost;
2. pings a connection only when it has been idle for longer than ``pre_ping_idle_after``
   (the one that may have been dropped silently: a firewall's or NAT's idle timeout);
3. hands out every other connection as it is.

A disconnect found either way invalidates the whole pool, as SQLAlchemy's own pre-ping
does: every connection opened before it is replaced at its next checkout, without a ping,
so after a server restart no request meets a connection from before it. A disconnect met
by a statement invalidates the pool too (SQLAlchemy's ``invalidate_pool_on_disconnect``).
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

__all__ = ["IDLE_SINCE_KEY", "known_closed", "ping_when_idle"]

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
        if known_closed(dbapi_connection):
            raise sa_exc.InvalidatePoolError("the driver reports the connection closed")
        if time.monotonic() - idle_since <= idle_after:
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


def known_closed(dbapi_connection: Any) -> bool:
    """Whether the driver already knows *dbapi_connection* is closed, asked without I/O.

    asyncpg notices a server's goodbye while the connection is idle (``is_closed()``);
    psycopg reads nothing while idle, so its ``closed`` changes only on use and idle
    pings are its only test.
    """
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is None:
        return False
    is_closed = getattr(driver, "is_closed", None)
    if callable(is_closed):
        return bool(is_closed())
    return getattr(driver, "closed", False) is True
