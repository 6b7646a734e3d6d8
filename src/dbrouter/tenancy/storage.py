"""A tenant's storage on the server: the names it is created under, and the server's
refusals to create or drop it as dbrouter's errors."""

from __future__ import annotations

import re

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import TenantError, TenantExistsError, UnknownTenantError

__all__ = ["NO_SUCH_DATABASE", "quoted", "refused", "sqlstate"]

NO_SUCH_DATABASE = "3D000"
"""PostgreSQL's "database does not exist": a tenant the URL template points nowhere."""
_NO_SUCH_SCHEMA = "3F000"
_DUPLICATE_DATABASE = "42P04"
_DUPLICATE_SCHEMA = "42P06"
_INSUFFICIENT_PRIVILEGE = "42501"
_OBJECT_IN_USE = "55006"
_LOCK_NOT_AVAILABLE = "55P03"
_MISSING = re.compile(r'FATAL:\s+database ".*" does not exist')


def quoted(connection: AsyncConnection, name: str) -> str:
    """*name* as an SQL identifier, always quoted: exactly the template's, whatever its
    case."""
    return connection.dialect.identifier_preparer.quote_identifier(name)


def refused(exc: sa_exc.DBAPIError, tenant: str, what: str, action: str) -> Exception:
    """The error to raise when the server refused to *action* the *what* of *tenant*."""
    state = sqlstate(exc)
    if state in (_DUPLICATE_DATABASE, _DUPLICATE_SCHEMA):
        return TenantExistsError(tenant, what)
    if state in (NO_SUCH_DATABASE, _NO_SUCH_SCHEMA):
        return UnknownTenantError(tenant)
    if state == _INSUFFICIENT_PRIVILEGE:
        return TenantError(
            f"cannot {action} tenant {tenant!r}: the server refused to {action} {what} "
            "(permission denied: the role of the template needs CREATEDB, or to own it)"
        )
    if state in (_OBJECT_IN_USE, _LOCK_NOT_AVAILABLE):
        return TenantError(
            f"cannot {action} tenant {tenant!r}: {what} is in use by other sessions"
        )
    return exc


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of the first error in *exc*'s chain that has one."""
    current: BaseException | None = exc
    while current is not None:
        state = getattr(current, "sqlstate", None)
        if isinstance(state, str):
            return state
        if state is None and "FATAL:" in str(current) and _MISSING.search(str(current)):
            return NO_SUCH_DATABASE  # libpq (psycopg) gives the server's refusal as text
        current = current.__cause__ or (
            current.orig if isinstance(current, sa_exc.DBAPIError) else None
        )
    return None
