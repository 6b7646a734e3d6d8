"""The one mapping from dbrouter's errors to HTTP answers.

Clients get a status and a short, generic message: never a URL, a host, a database name,
a reason that could reveal one, or another tenant's id.
"""

from __future__ import annotations

from fastapi import HTTPException

from ..errors import (
    DatabaseUnavailableError,
    DBRouterError,
    RouterClosedError,
    TenantResolutionError,
    UnknownTenantError,
)

__all__ = ["RETRY_AFTER_CLOSING", "http_error"]

RETRY_AFTER_CLOSING = 5
"""``Retry-After`` seconds for a request that arrives while the router shuts down."""


def http_error(error: DBRouterError) -> HTTPException | None:
    """The HTTP answer to *error*, or None when it is a bug to surface as a 500."""
    if isinstance(error, TenantResolutionError):
        detail = "missing tenant id" if error.missing else "invalid tenant id"
        return HTTPException(status_code=400, detail=detail)
    if isinstance(error, UnknownTenantError):
        return HTTPException(status_code=404, detail="unknown tenant")
    if isinstance(error, DatabaseUnavailableError):
        return _unavailable(error.retry_after)
    if isinstance(error, RouterClosedError):
        # Shutdown began (or a tenant's engine kept being replaced under the request).
        return _unavailable(RETRY_AFTER_CLOSING)
    return None


def _unavailable(retry_after: int) -> HTTPException:
    return HTTPException(
        status_code=503,
        detail="database unavailable, try again later",
        headers={"Retry-After": str(retry_after)},
    )
