"""Why a database failed, in words an operator can act on, and whether that failure is an
outage ("the database cannot be reached now").

`classify` turns any exception into a `FailureReason`: one of a fixed set of kinds, the
SQLSTATE where there is one, and a short text that never holds a URL, a host, a user
name or a password. Health checks, the ``dbrouter`` command and the replica probe all say
why through it.

An outage is worth a retry (HTTP 503 with ``Retry-After``); any other error is a bug or a
conflict the application has to handle itself. `outage_reason` tells them apart.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

from sqlalchemy import exc as sa_exc

from .errors import BudgetExhaustedError, DatabaseUnavailableError, DBRouterError

__all__ = [
    "FailureKind",
    "FailureReason",
    "as_cancelled_statement",
    "as_unavailable",
    "budget_exhausted",
    "classify",
    "outage_reason",
    "server_outage",
    "tls_failure",
]

FailureKind = Literal[
    "authentication failed",
    "database does not exist",
    "permission denied",
    "unreachable",
    "timeout",
    "TLS",
    "too many connections",
    "shutting down",
    "not accepting connections",
    "connection lost",
    "idle in transaction timeout",
    "pool exhausted",
    "connection budget exhausted",
    "unavailable",
    "read-only",
    "statement timeout",
    "cancelled",
    "other",
]
"""The kinds of failure `classify` tells apart."""

_PHRASES: Final[dict[str, str]] = {
    "authentication failed": "authentication failed",
    "database does not exist": "database does not exist",
    "permission denied": "permission denied",
    "unreachable": "unreachable",
    "timeout": "no answer within connect_timeout",
    "TLS": "TLS failed",
    "too many connections": "too many connections",
    "shutting down": "server shutting down",
    "not accepting connections": "server not accepting connections",
    "connection lost": "connection lost",
    "idle in transaction timeout": "idle in a transaction too long",
    "pool exhausted": "no pooled connection free within pool_timeout",
    "connection budget exhausted": "max_connections reached",
    "read-only": "read-only transaction",
    "statement timeout": "statement timeout",
    "cancelled": "statement cancelled",
}


@dataclass(frozen=True, slots=True)
class FailureReason:
    """Why an operation on a database failed, as `classify` tells it."""

    kind: FailureKind
    """One of a fixed set of words, for alerts and scripts."""
    sqlstate: str | None = None
    """The PostgreSQL error code, when the server sent one."""
    detail: str | None = None
    """For ``other``, the exception's class name; for ``unavailable``, dbrouter's reason; for
    ``TLS``, which part of it failed (the certificate, the host name, no TLS offered)."""

    @property
    def text(self) -> str:
        """The reason as a short phrase: ``authentication failed (SQLSTATE 28P01)``."""
        if self.kind == "other":
            phrase = f"other error: {self.detail}"
        elif self.kind in ("unavailable", "TLS"):
            phrase = self.detail or _PHRASES.get(self.kind, "unavailable")
        else:
            phrase = _PHRASES[self.kind]
        return f"{phrase} (SQLSTATE {self.sqlstate})" if self.sqlstate else phrase

    def __str__(self) -> str:
        return self.text


def classify(exc: BaseException) -> FailureReason:
    """Why *exc* happened, read from it and the exceptions it was raised from.

    Knows SQLAlchemy's wrappers, asyncpg's and psycopg's errors (for psycopg's connection
    failures, which carry no SQLSTATE, the server's message), the builtin network and
    TLS errors, timeouts, and dbrouter's own `DatabaseUnavailableError`. Anything else is
    ``other``, with the class name of the innermost exception.
    """
    found: FailureReason | None = None
    unavailable: DatabaseUnavailableError | None = None
    first_sqlstate: str | None = None
    invalidated = False
    for cause in _chain(exc):
        if isinstance(cause, DatabaseUnavailableError) and unavailable is None:
            unavailable = cause
        if isinstance(cause, sa_exc.DBAPIError) and cause.connection_invalidated:
            invalidated = True
        sqlstate = _sqlstate(cause)
        if first_sqlstate is None:
            first_sqlstate = sqlstate
        reason = _recognize(cause, sqlstate)
        if reason is None:
            continue
        if found is None or found.kind == "connection lost":
            # A lost connection often carries what ended it (asyncpg: 08003 from 57P01).
            found = reason
        if found.kind != "connection lost":
            return found
    if found is not None:
        return found
    if invalidated:
        return FailureReason("connection lost")
    if unavailable is not None:
        return FailureReason("unavailable", detail=unavailable.reason)
    return FailureReason("other", first_sqlstate, type(_innermost(exc)).__name__)


def _recognize(cause: BaseException, sqlstate: str | None) -> FailureReason | None:
    reason = _recognize_kind(cause, sqlstate)
    if reason is not None and reason.kind == "TLS" and reason.detail is None:
        # Which part of TLS failed: the certificate, the host name, no TLS offered...
        return FailureReason("TLS", reason.sqlstate, tls_failure(cause))
    return reason


def _recognize_kind(cause: BaseException, sqlstate: str | None) -> FailureReason | None:
    if isinstance(cause, BudgetExhaustedError):
        return FailureReason("connection budget exhausted")
    if isinstance(cause, DBRouterError):
        return None  # a DatabaseUnavailableError says why through its cause
    if isinstance(cause, sa_exc.TimeoutError):
        return FailureReason("pool exhausted")
    if isinstance(cause, ssl.SSLError):
        return FailureReason("TLS")
    if isinstance(cause, (TimeoutError, asyncio.TimeoutError)):
        return FailureReason("timeout")
    if isinstance(cause, ConnectionRefusedError):
        return FailureReason("unreachable")
    if isinstance(cause, ConnectionError):
        # asyncpg: 'PostgreSQL server at "host:port" rejected SSL upgrade'.
        return FailureReason("TLS" if "SSL" in str(cause) else "connection lost")
    if isinstance(cause, OSError):
        return FailureReason("unreachable")  # no route, no such host, network down
    if sqlstate is not None:
        return _by_sqlstate(sqlstate, str(cause))
    if _is_psycopg_operational_error(cause):
        return _by_libpq_message(str(cause))
    if _is_closed_connection_error(cause):
        return FailureReason("connection lost")
    return None


def _by_sqlstate(sqlstate: str, message: str) -> FailureReason | None:
    kind: FailureKind
    if sqlstate.startswith("28"):
        kind = "authentication failed"
    elif sqlstate == "3D000":
        kind = "database does not exist"
    elif sqlstate == "42501":
        kind = "permission denied"
    elif sqlstate == "53300":
        kind = "too many connections"
    elif sqlstate in ("57P01", "57P02"):
        kind = "shutting down"
    elif sqlstate == "57P03":
        kind = "shutting down" if "shutting down" in message else "not accepting connections"
    elif sqlstate in ("08001", "08004"):
        kind = "unreachable"
    elif sqlstate.startswith("08"):
        kind = "connection lost"
    elif sqlstate == "25P03":
        kind = "idle in transaction timeout"
    elif sqlstate == "25006":
        kind = "read-only"
    elif sqlstate == "57014":
        kind = "statement timeout" if "statement timeout" in message else "cancelled"
    else:
        return None
    return FailureReason(kind, sqlstate)


# The server's refusals when psycopg connects arrive as libpq's text, "... FATAL:  <the
# server's message>", without their SQLSTATE; each message below is raised by the server
# with exactly one SQLSTATE. They match the server's English messages (lc_messages C or en).
_FATAL_REFUSALS: Final[tuple[tuple[str, FailureKind, str], ...]] = (
    (r"^password authentication failed", "authentication failed", "28P01"),
    (r'^role ".*" does not exist', "authentication failed", "28000"),
    (r"^no pg_hba\.conf entry|^pg_hba\.conf rejects", "authentication failed", "28000"),
    (r"^\w+ authentication failed", "authentication failed", "28000"),
    (r'^database ".*" does not exist', "database does not exist", "3D000"),
    (r"^permission denied", "permission denied", "42501"),
    (r"too many (clients|connections)", "too many connections", "53300"),
    (r"remaining connection slots", "too many connections", "53300"),
    (r"^the database system is shutting down", "shutting down", "57P03"),
    (r"^the database system is", "not accepting connections", "57P03"),
    (r"^terminating connection due to administrator command", "shutting down", "57P01"),
)
_FATAL_MESSAGES: Final = tuple(
    (re.compile(pattern), kind, sqlstate) for pattern, kind, sqlstate in _FATAL_REFUSALS
)
# Failures libpq reports itself, before or after talking to the server.
_CLIENT_MESSAGES: Final[tuple[tuple[tuple[str, ...], FailureKind], ...]] = (
    (("SSL SYSCALL error", "SSL connection has been closed unexpectedly"), "connection lost"),
    (("SSL", "certificate"), "TLS"),
    (("timeout expired",), "timeout"),
    (
        (
            "server closed the connection",
            "consuming input failed",
            "could not receive data",
            "could not send data",
            "connection is closed",
            "connection is lost",
            "connection not open",
            "no connection to the server",
        ),
        "connection lost",
    ),
)


def _by_libpq_message(message: str) -> FailureReason | None:
    if "FATAL:" in message:
        refusal = message.split("FATAL:", 1)[1].strip()
        for pattern, kind, sqlstate in _FATAL_MESSAGES:
            if pattern.search(refusal):
                return FailureReason(kind, sqlstate)
        return None
    for words, kind in _CLIENT_MESSAGES:
        if any(word in message for word in words):
            return FailureReason(kind)
    # Connection refused, no route, a host name that does not resolve.
    return FailureReason("unreachable")


def _is_closed_connection_error(exc: BaseException) -> bool:
    message = str(exc)
    return (
        type(exc).__name__ in ("ConnectionDoesNotExistError", "InterfaceError")
        and "connection" in message
        and "closed" in message
    )


def _sqlstate(exc: BaseException) -> str | None:
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate if isinstance(sqlstate, str) and sqlstate else None


def _innermost(exc: BaseException) -> BaseException:
    current = exc
    seen = {id(current)}
    while True:
        inner = current.__cause__
        if inner is None and isinstance(current, sa_exc.DBAPIError):
            inner = current.orig
        if inner is None or id(inner) in seen:
            return current
        seen.add(id(inner))
        current = inner


# ---- outages ---------------------------------------------------------------------------

# SQLSTATE classes and codes that mean the server went away or will not take connections:
# 08 connection exception, 57P01-57P03 admin/crash shutdown and "cannot connect now",
# 53300 too many connections.
_OUTAGE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")
_NOT_NOW = ("the database system is", "too many clients", "remaining connection slots")


def outage_reason(exc: BaseException) -> str | None:
    """Why *exc* means the database is unavailable (the `FailureReason` text), or None
    when it means something else."""
    if isinstance(exc, DatabaseUnavailableError):
        return exc.reason
    if not _is_outage(exc):
        return None
    return classify(exc).text


def _is_outage(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    for cause in _chain(exc):
        if isinstance(cause, DBRouterError):
            return False  # our own errors say what they mean
        # Timeouts, refused or dropped connections, no route, TLS.
        if isinstance(cause, (TimeoutError, asyncio.TimeoutError, OSError)):
            return True
        sqlstate = getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_OUTAGE_SQLSTATES):
            return True
        if sqlstate is None and _is_psycopg_operational_error(cause):
            # psycopg gives no SQLSTATE when connecting fails: the server's own refusal
            # comes as libpq's "FATAL:" text. Only the refusals that mean "not now" are
            # outages; an unknown database or a wrong password is not.
            message = str(cause)
            if "FATAL:" not in message or any(words in message for words in _NOT_NOW):
                return True
        if _is_closed_connection_error(cause):
            return True
    return False


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
        # OpenSSL's own verdict names the host: it is not repeated.
        if "hostname mismatch" in str(getattr(exc, "verify_message", None) or exc).lower():
            return "TLS: the server's certificate is not for this host name"
        return "TLS: the server's certificate was not accepted"
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
