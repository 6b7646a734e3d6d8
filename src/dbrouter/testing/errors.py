"""The errors of the testing toolkit: a test used its databases in a way the isolation
cannot give it, or touched a database it did not declare."""

from __future__ import annotations

from sqlalchemy.exc import DontWrapMixin

from ..errors import DBRouterError

__all__ = ["IsolationError", "UndeclaredDatabaseError"]


class IsolationError(DBRouterError, RuntimeError, DontWrapMixin):
    """A database was used in a way a test's isolation cannot serve: outside a test, from
    another event loop, by sessions that overlap out of order, or at an isolation level
    the test's transaction does not have. The message says which, and what to do.

    Raised where SQLAlchemy runs a statement, it reaches the caller as it is, not wrapped
    in a ``StatementError``."""


class UndeclaredDatabaseError(IsolationError):
    """A test touched a database (or tenant) its ``dbrouter`` marker does not declare,
    while the guard is on."""

    def __init__(self, name: str, declared: str) -> None:
        super().__init__(
            f"this test touched {name}, which it does not declare; declared: {declared}. "
            "Add it to the test's marker, e.g. @pytest.mark.dbrouter(databases=[...], "
            "tenants=[...])"
        )
        self.name = name
        """What was touched: ``database 'replica'`` or ``tenant 'acme'``."""
