"""Telling "the database cannot be reached now" apart from every other database error.

The first kind is worth a retry (HTTP 503 with ``Retry-After``); the second is a bug or a
conflict the application has to handle itself.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator

from sqlalchemy import exc as sa_exc

from .errors import BudgetExhaustedError, DatabaseUnavailableError, DBRouterError

# SQLSTATE classes and codes that mean the server went away or will not take connections:
# 08 connection exception, 57P01-57P03 admin/crash shutdown and "cannot connect now",
# 53300 too many connections.
_OUTAGE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")


def outage_reason(exc: BaseException) -> str | None:
    """Why *exc* means the database is unavailable, or None when it means something else."""
    if isinstance(exc, DatabaseUnavailableError):
        return exc.reason
    if isinstance(exc, sa_exc.TimeoutError):
        return "no pooled connection became free within pool_timeout"
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return "the connection to the server was lost"
    for cause in _chain(exc):
        if isinstance(cause, DBRouterError):
            return None  # our own errors say what they mean
        tls = tls_failure(cause)
        if tls is not None:
            return tls
        if isinstance(cause, (TimeoutError, asyncio.TimeoutError)):
            return "connecting timed out"
        if isinstance(cause, ConnectionError):
            return "the server refused or dropped the connection"
        if isinstance(cause, OSError):
            return "the server could not be reached"
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_OUTAGE_SQLSTATES):
            return f"the server is not accepting connections (SQLSTATE {sqlstate})"
        if sqlstate is None and _is_psycopg_operational_error(cause):
            # psycopg gives no SQLSTATE when connecting fails: the server's own refusal
            # comes as libpq's "FATAL:" text. Only the refusals that mean "not now" are
            # outages; an unknown database or a wrong password is not.
            message = str(cause)
            if "FATAL:" not in message:
                return "the server could not be reached"
            if any(words in message for words in _NOT_NOW):
                return "the server is not accepting connections"
        if type(cause).__name__ in ("ConnectionDoesNotExistError", "InterfaceError") and (
            "connection" in str(cause) and "closed" in str(cause)
        ):
            return "the connection to the server was lost"
    return None


_NOT_NOW = ("the database system is", "too many clients", "remaining connection slots")


def _is_psycopg_operational_error(exc: BaseException) -> bool:
    return any(
        cls.__name__ == "OperationalError" and cls.__module__.partition(".")[0] == "psycopg"
        for cls in type(exc).__mro__
    )


def server_outage(exc: BaseException) -> bool:
    """Whether *exc* says the server itself is unavailable, rather than that no connection
    was free on this side (pool or ``max_connections`` exhausted)."""
    if outage_reason(exc) is None:
        return False
    return not any(
        isinstance(cause, (sa_exc.TimeoutError, DatabaseUnavailableError)) for cause in _chain(exc)
    )


def budget_exhausted(exc: BaseException) -> bool:
    """Whether *exc* comes from ``max_connections``: the process is at its limit, and the
    server may be perfectly healthy."""
    return any(isinstance(cause, BudgetExhaustedError) for cause in _chain(exc))


def as_unavailable(exc: BaseException, name: str) -> DatabaseUnavailableError | None:
    """*exc* as a `DatabaseUnavailableError` for database *name*, if it is an outage."""
    if isinstance(exc, DatabaseUnavailableError):
        return exc
    reason = outage_reason(exc)
    if reason is None:
        return None
    error = DatabaseUnavailableError(name, reason)
    error.__cause__ = exc
    return error


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


# -- TLS ----------------------------------------------------------------------------------

# libpq's words for a failed TLS set-up -> the reason; the message itself may name hosts.
_LIBPQ_TLS = (
    ("certificate verify failed", "TLS: the server's certificate was not accepted"),
    ("does not match host name", "TLS: the server's certificate is not for this host name"),
    ("server does not support SSL", "TLS: the server does not offer TLS"),
    ("root certificate file", "TLS: the authorities' certificate file could not be read"),
    ("SSL error:", "TLS: the handshake with the server failed"),
)


def tls_failure(exc: BaseException) -> str | None:
    """Why TLS with the server failed, when *exc* (one exception, not its causes) says so."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        # OpenSSL's verdict, such as "Hostname mismatch, certificate is not valid for 'x'".
        return f"TLS: the server's certificate was not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return "TLS: the handshake with the server failed"
    if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc):
        return "TLS: the server does not offer TLS"  # asyncpg's words
    if _is_psycopg_operational_error(exc) and "FATAL:" not in str(exc):
        message = str(exc)
        return next((reason for words, reason in _LIBPQ_TLS if words in message), None)
    return None


# -- a statement cancelled by the server ----------------------------------------------------

# SQLSTATE 57014 query_canceled: statement_timeout ran out, or someone cancelled it.
_QUERY_CANCELED = "57014"


def as_cancelled_statement(exc: BaseException, name: str) -> DatabaseUnavailableError | None:
    """*exc* as a `DatabaseUnavailableError` for database *name* when the server cancelled
    a statement (``statement_timeout``), else None.

    Not an outage: the server is up and the connection stays usable once the transaction
    is rolled back, so no replica leaves rotation for it. The request still gets 503 with
    ``Retry-After``, like every answer that the database could not serve it in time.
    """
    for cause in _chain(exc):
        if isinstance(cause, DBRouterError):
            return None
        if getattr(cause, "sqlstate", None) == _QUERY_CANCELED:
            error = DatabaseUnavailableError(
                name, "the server cancelled a statement (statement_timeout or a cancel request)"
            )
            error.__cause__ = exc
            return error
    return None
