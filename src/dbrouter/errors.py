"""The exception tree: one root, a shallow tree, builtin mixins.

Messages are written for the developer reading a log or a traceback: they say what was
wrong and what the valid choices are. They never contain a password. HTTP clients see
none of them verbatim; the FastAPI layer turns them into short, generic responses.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BudgetExhaustedError",
    "ConfigurationError",
    "DBRouterError",
    "DatabaseUnavailableError",
    "ReadOnlySessionError",
    "RouterClosedError",
    "SessionClosedError",
    "TenantError",
    "TenantExistsError",
    "TenantResolutionError",
    "UnknownDatabaseError",
    "UnknownTenantError",
    "UnmanagedTenantError",
]


def _choices(names: Iterable[str]) -> str:
    listed = sorted(names)
    return ", ".join(repr(name) for name in listed) if listed else "(none configured)"


class DBRouterError(Exception):
    """Root of every error dbrouter raises."""


class ConfigurationError(DBRouterError, ValueError):
    """The configuration is invalid: an unknown key, a bad URL, a dangling reference.

    ``problems`` lists each problem as ``(key, message)``, the key dotted from the top of
    the settings (``databases.primary.url``), or empty where the message names it.
    """

    def __init__(self, message: str, *, problems: Iterable[tuple[str, str]] = ()) -> None:
        self.problems = tuple(problems) or (("", message),)
        super().__init__(message)


class UnknownDatabaseError(DBRouterError, LookupError):
    """A database name that is not configured was asked for."""

    def __init__(self, name: str, configured: Iterable[str]) -> None:
        self.name = name
        self.configured = tuple(sorted(configured))
        super().__init__(
            f"unknown database {name!r}; configured databases: {_choices(self.configured)}"
        )


class TenantError(DBRouterError):
    """Base of the errors about the tenant of a request."""


class TenantResolutionError(TenantError, ValueError):
    """No tenant could be read from the request, or the id read is malformed or given more
    than once."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        self.missing = missing
        """Whether the request named no tenant at all (rather than a bad one)."""
        super().__init__(message)


class UnknownTenantError(TenantError, LookupError):
    """The tenant id is well formed but names no known tenant."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        super().__init__(f"unknown tenant {tenant!r}")


class TenantExistsError(TenantError, ValueError):
    """A tenant was to be created whose database or schema exists already."""

    def __init__(self, tenant: str, where: str) -> None:
        self.tenant = tenant
        super().__init__(f"tenant {tenant!r} exists already: {where} is there")


class UnmanagedTenantError(TenantError, ValueError):
    """A tenant was to be created or dropped whose storage dbrouter does not derive (a
    database of its own, a catalog entry): it is created and dropped where it is declared."""


class DatabaseUnavailableError(DBRouterError, ConnectionError):
    """A database could not be reached in time: down, refusing, or its pool is exhausted."""

    def __init__(self, name: str, reason: str, *, retry_after: int = 5) -> None:
        self.name = name
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"database {name!r} is unavailable: {reason}")


class BudgetExhaustedError(DatabaseUnavailableError):
    """No slot of ``max_connections`` freed up in time: the process, not the server, is at
    its limit."""


class ReadOnlySessionError(DBRouterError, RuntimeError):
    """A write was attempted through a read-only (replica) session."""


class SessionClosedError(DBRouterError, RuntimeError):
    """A session was used after its request (or its ``async with`` block) ended: it opens
    no connection any more. Open a new session where the work happens."""


class RouterClosedError(DBRouterError, RuntimeError):
    """The router was disposed; it opens no connection any more."""

    def __init__(self) -> None:
        super().__init__("the DatabaseRouter has been disposed and cannot be used any more")
