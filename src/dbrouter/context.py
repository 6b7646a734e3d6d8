"""The tenant of the code running now, in a ContextVar that is always reset by token."""

from __future__ import annotations

from contextvars import ContextVar, Token

__all__ = ["current_tenant", "enter_tenant", "leave_tenant"]

_current_tenant: ContextVar[str | None] = ContextVar("dbrouter_tenant", default=None)


def current_tenant() -> str | None:
    """The tenant of the current request or `DatabaseRouter.tenant_session` block, if any.

    Background tasks of a request see the request's tenant; the next request never does.
    """
    return _current_tenant.get()


def enter_tenant(tenant: str) -> Token[str | None]:
    """Make *tenant* the current tenant, until `leave_tenant` is given the token."""
    return _current_tenant.set(tenant)


def leave_tenant(token: Token[str | None]) -> None:
    """The current tenant as it was before the `enter_tenant` that returned *token*."""
    _current_tenant.reset(token)
