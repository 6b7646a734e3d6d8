"""The session and tenant dependencies: ``Depends(get_db(...))``, ``get_tenant_db()``,
``get_tenant()``."""

# No ``from __future__ import annotations``: FastAPI reads these annotations at runtime,
# and the committing dependency refers to a local variable.
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from contextvars import Token
from typing import Annotated, Any, NoReturn

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from ..context import enter_tenant, leave_tenant
from ..errors import ConfigurationError, DatabaseUnavailableError, DBRouterError
from ..events import UnavailableAnswered
from ..lending import TenantLentSession
from ..outages import classify
from ..router import DatabaseRouter
from ..settings import TenantSettings
from ..tenancy.resolvers import TenantRequest
from ..tenancy.routing import Tenancy
from .errors import http_error

__all__ = [
    "DATABASE_ATTRIBUTE",
    "STATE_KEY",
    "TENANT_MARK",
    "SessionDependency",
    "get_db",
    "get_tenant",
    "get_tenant_db",
    "provide_tenant",
    "router_of",
]

STATE_KEY = "dbrouter"
"""The key of the router in the lifespan state (``request.state.dbrouter``)."""

DATABASE_ATTRIBUTE = "__dbrouter_database__"
TENANT_MARK = "<tenant>"  # stands for "the request's tenant" among the database names used
_SCOPE_TENANT = "dbrouter.tenant"  # the request's tenant and its settings, once looked up
# FastAPI's own key for the exit stack of request-scoped dependencies (not a public name:
# without it, a committed session's tenant is reset when the session ends).
_REQUEST_STACK = "fastapi_inner_astack"

SessionDependency = Callable[..., Any]
"""What `get_db` returns: a callable for ``Depends``."""


def get_db(name: str | None = None, *, commit: bool = False) -> SessionDependency:
    """A dependency yielding an `AsyncSession` on database *name* (None: the default).

    The session rolls back when the endpoint raises and is always closed. With
    ``commit=True`` it commits after the endpoint returns and before the response is sent,
    so a failed commit is an error response, never a 200. An unreachable database or an
    exhausted pool is answered with 503 and ``Retry-After``.

    The same arguments return the same callable, so
    ``app.dependency_overrides[get_db("replica")] = ...`` works.
    """
    return _session_dependency(name, commit)


def get_tenant() -> Callable[..., Any]:
    """A dependency returning the tenant id of the request, validated and known.

    A request without a tenant id, or with a malformed one, is answered 400 before any
    database is touched; an id that names no tenant is answered 404. The answers never
    list tenants or show a URL. While the request runs (its background tasks included),
    `dbrouter.current_tenant()` returns the id.
    """
    return provide_tenant


def get_tenant_db(*, commit: bool = False) -> SessionDependency:
    """A dependency yielding an `AsyncSession` on the data of the request's tenant.

    The same as `get_db` otherwise: rollback when the endpoint raises, commit before the
    response with ``commit=True``, 503 when the tenant's database is unavailable.
    """
    return _tenant_session_dependency(commit)


async def provide_tenant(request: Request) -> AsyncIterator[str]:
    """Resolve, validate and look up the tenant of *request*; it is current meanwhile."""
    known = await _request_tenant(request, router_of(request))
    known.enter()
    try:
        yield known.tenant
    finally:
        known.leave()


class _RequestTenant:
    """The tenant of one request, looked up once, and current while any of the request's
    dependencies that use it is active.

    `get_tenant` and `get_tenant_db` may both serve an endpoint, and FastAPI ends a
    function-scoped dependency before a request-scoped one whatever their order: the
    tenant is made current by the first to start and reset by the last to end.
    """

    __slots__ = ("_token", "_users", "settings", "tenancy", "tenant")

    def __init__(self, tenancy: Tenancy, tenant: str, settings: TenantSettings) -> None:
        self.tenancy = tenancy
        self.tenant = tenant
        self.settings = settings
        self._users = 0
        self._token: Token[str | None] | None = None

    def enter(self) -> None:
        if self._users == 0:
            self._token = enter_tenant(self.tenant)
        self._users += 1

    def leave(self) -> None:
        self._users -= 1
        if self._users == 0 and self._token is not None:
            leave_tenant(self._token)
            self._token = None


async def _request_tenant(request: Request, router: DatabaseRouter) -> _RequestTenant:
    """The tenant of *request*: resolved, validated and looked up once per request; an
    HTTP error otherwise."""
    scope = request.scope
    known: _RequestTenant | None = scope.get(_SCOPE_TENANT)
    if known is not None:
        return known
    headers = request.headers
    host = headers.get("host")
    try:
        tenancy = router.tenancy
        raw = await tenancy.resolver.resolve(
            TenantRequest(
                headers=headers,
                host=host.rsplit(":", 1)[0] if host else None,
                path_params=request.path_params,
                state=scope.get("state") or {},
            )
        )
        known = _RequestTenant(tenancy, *await tenancy.identify(raw))
    except DBRouterError as exc:
        _answer(exc, router, router.settings.default_database)
    scope[_SCOPE_TENANT] = known
    return known


setattr(provide_tenant, DATABASE_ATTRIBUTE, TENANT_MARK)


def router_of(request: Request) -> DatabaseRouter:
    """The router serving *request*, attached by ``router.lifespan``."""
    state = request.scope.get("state")
    router = state.get(STATE_KEY) if state else None
    if router is None:
        router = getattr(request.app.state, STATE_KEY, None)
    if not isinstance(router, DatabaseRouter):
        raise ConfigurationError(
            "no DatabaseRouter is attached to this app; create it with "
            "FastAPI(lifespan=router.lifespan) or enter router.lifespan(app) in your lifespan"
        )
    return router


def _answer(error: DBRouterError, router: DatabaseRouter, database: str) -> NoReturn:
    """Answer the client for *error*: its HTTP mapping, or *error* itself (a 500). A 503
    is reported to the router's events, for the database it names or else *database*."""
    answer = http_error(error)
    if answer is None:
        raise error
    if answer.status_code == 503 and router.events.wants(UnavailableAnswered):
        if isinstance(error, DatabaseUnavailableError):
            event = UnavailableAnswered(error.name, classify(error).kind)
        else:
            event = UnavailableAnswered(database, "router closed")
        router.events.emit(event)
    raise answer from error


@functools.cache
def _session_dependency(name: str | None, commit: bool) -> SessionDependency:
    provide = _session_provider(name, commit=commit)
    if not commit:
        setattr(provide, DATABASE_ATTRIBUTE, name)
        return provide

    # FastAPI ends a dependency's ``yield`` after the response is sent unless the dependency
    # is function-scoped; the commit has to happen before, so the provider is wrapped.
    async def provide_committed_session(
        session: Annotated[AsyncSession, Depends(provide, scope="function")],
    ) -> AsyncSession:
        return session

    setattr(provide_committed_session, DATABASE_ATTRIBUTE, name)
    return provide_committed_session


def _session_provider(
    name: str | None, *, commit: bool
) -> Callable[[Request], AsyncIterator[AsyncSession]]:
    async def provide_session(request: Request) -> AsyncIterator[AsyncSession]:
        router = router_of(request)
        try:
            async with router.session(name, commit=commit) as session:
                yield session
        except DBRouterError as exc:
            _answer(exc, router, name or router.settings.default_database)

    return provide_session


@functools.cache
def _tenant_session_dependency(commit: bool) -> SessionDependency:
    # One dependency, not one on top of `provide_tenant`: each costs FastAPI a solve.
    async def provide_tenant_session(request: Request) -> AsyncIterator[AsyncSession]:
        router = router_of(request)
        known = await _request_tenant(request, router)
        tenant = known.tenant
        lent = TenantLentSession(
            tenant, known.tenancy.route, commit=commit, settings=known.settings, current=False
        )
        known.enter()
        try:
            async with lent as session:
                yield session
        except DBRouterError as exc:
            _answer(exc, router, f"tenant:{tenant}")
        finally:
            # A committed session ends before the response; its tenant stays current
            # until the request's own end (its background tasks included), where FastAPI
            # ends the request's dependencies.
            request_stack = request.scope.get(_REQUEST_STACK) if commit else None
            if isinstance(request_stack, AsyncExitStack):
                request_stack.callback(known.leave)
            else:
                known.leave()

    setattr(provide_tenant_session, DATABASE_ATTRIBUTE, TENANT_MARK)
    if not commit:
        return provide_tenant_session

    async def provide_committed_tenant_session(
        session: Annotated[AsyncSession, Depends(provide_tenant_session, scope="function")],
    ) -> AsyncSession:
        return session

    return provide_committed_tenant_session
