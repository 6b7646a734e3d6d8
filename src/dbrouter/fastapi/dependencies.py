"""The FastAPI edge: dependencies, startup checks, HTTP status mapping, the health route.

This is the only module that imports FastAPI; the rest of dbrouter takes plain values.
"""

# No ``from __future__ import annotations``: FastAPI reads these annotations at runtime,
# and the committing dependency refers to a local variable.
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, APIWebSocketRoute
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import MutableHeaders
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..context import tenant_context
from ..errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    RouterClosedError,
    TenantResolutionError,
    UnknownTenantError,
)
from ..replicas.consistency import (
    TOKEN_COOKIE,
    TOKEN_HEADER,
    Mark,
    RequestConsistency,
    format_token,
    merge,
    parse_token,
    reset_consistency,
    set_consistency,
)
from ..router import DatabaseRouter
from ..tenancy.resolvers import TenantRequest

logger = logging.getLogger("dbrouter")

STATE_KEY = "dbrouter"
"""The key of the router in the lifespan state (``request.state.dbrouter``)."""

_DATABASE_ATTRIBUTE = "__dbrouter_database__"
_TENANT = "<tenant>"  # stands for "the request's tenant" among the database names used

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
    router = router_of(request)
    tenancy = router.tenancy
    headers = request.headers
    host = headers.get("host")
    raw = await tenancy.resolver.resolve(
        TenantRequest(
            headers=headers,
            host=host.rsplit(":", 1)[0] if host else None,
            path_params=request.path_params,
            state=request.scope.get("state") or {},
        )
    )
    try:
        tenant, _ = await tenancy.identify(raw)
    except TenantResolutionError as exc:
        detail = "missing tenant id" if raw is None else "invalid tenant id"
        raise HTTPException(status_code=400, detail=detail) from exc
    except UnknownTenantError as exc:
        raise HTTPException(status_code=404, detail="unknown tenant") from exc
    except DatabaseUnavailableError as exc:
        raise service_unavailable(exc) from exc
    with tenant_context(tenant):
        yield tenant


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


def service_unavailable(error: DatabaseUnavailableError) -> HTTPException:
    """The 503 answer to *error*: it names neither the database's address nor the reason."""
    return HTTPException(
        status_code=503,
        detail="database unavailable, try again later",
        headers={"Retry-After": str(error.retry_after)},
    )


@functools.cache
def _session_dependency(name: str | None, commit: bool) -> SessionDependency:
    provide = _session_provider(name, commit=commit)
    if not commit:
        setattr(provide, _DATABASE_ATTRIBUTE, name)
        return provide

    # FastAPI ends a dependency's ``yield`` after the response is sent unless the dependency
    # is function-scoped; the commit has to happen before, so the provider is wrapped.
    async def provide_committed_session(
        session: Annotated[AsyncSession, Depends(provide, scope="function")],
    ) -> AsyncSession:
        return session

    setattr(provide_committed_session, _DATABASE_ATTRIBUTE, name)
    return provide_committed_session


def _session_provider(
    name: str | None, *, commit: bool
) -> Callable[[Request], AsyncIterator[AsyncSession]]:
    async def provide_session(request: Request) -> AsyncIterator[AsyncSession]:
        router = router_of(request)
        try:
            async with router.session(name, commit=commit) as session:
                yield session
        except DatabaseUnavailableError as exc:
            raise service_unavailable(exc) from exc

    return provide_session


@functools.cache
def _tenant_session_dependency(commit: bool) -> SessionDependency:
    async def provide_tenant_session(
        request: Request, tenant: Annotated[str, Depends(provide_tenant)]
    ) -> AsyncIterator[AsyncSession]:
        router = router_of(request)
        try:
            async with router.tenant_session(tenant, commit=commit) as session:
                yield session
        except UnknownTenantError as exc:
            raise HTTPException(status_code=404, detail="unknown tenant") from exc
        except DatabaseUnavailableError as exc:
            raise service_unavailable(exc) from exc
        except RouterClosedError as exc:
            # The tenant's engine kept being replaced under this request, or shutdown began.
            raise service_unavailable(DatabaseUnavailableError("tenant", str(exc))) from exc

    if not commit:
        return provide_tenant_session

    async def provide_committed_tenant_session(
        session: Annotated[AsyncSession, Depends(provide_tenant_session, scope="function")],
    ) -> AsyncSession:
        return session

    return provide_committed_tenant_session


def attach_router(router: DatabaseRouter, app: Any) -> dict[str, Any]:
    """Check *app*'s routes against *router* and make the router reachable from requests.

    Every database named by a ``get_db(...)`` in the app's routes must be configured;
    otherwise startup stops with a `ConfigurationError` naming it and the configured names.
    """
    if router.closed:
        raise RouterClosedError()
    overrides = getattr(app, "dependency_overrides", {})
    for name in set(_database_names(getattr(app, "routes", ()), overrides)):
        if name is _TENANT:
            try:
                router.tenancy  # noqa: B018 - raises when tenancy is not configured
            except ConfigurationError as exc:
                raise ConfigurationError(f"the app uses get_tenant_db(): {exc}") from None
            continue
        try:
            router.database(name)
        except LookupError as exc:
            raise ConfigurationError(f"the app uses get_db({name!r}): {exc}") from None
    state = getattr(app, "state", None)
    if state is not None:
        setattr(state, STATE_KEY, router)
    stack = getattr(app, "middleware_stack", None)
    if (
        router.replication is not None
        and stack is not None
        and not isinstance(stack, ConsistencyMiddleware)
    ):
        # The stack was built for this very lifespan call; wrapping it here is what lets
        # FastAPI(lifespan=router.lifespan) alone carry tokens, with no middleware to add.
        app.middleware_stack = ConsistencyMiddleware(stack)
    return {STATE_KEY: router}


class ConsistencyMiddleware:
    """Reads the client's consistency token and answers writes with a fresh one.

    The token has to be in the response headers, and FastAPI has built the response by
    the time a dependency's exit code runs; so it is added here, as the response starts.
    The positions were read when the commits happened, so adding it costs no I/O.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestConsistency(required=_sent_marks(scope))
        token = set_consistency(record)

        async def send_with_token(message: Message) -> None:
            if message["type"] == "http.response.start" and record.written:
                _add_token(message, record)
            await send(message)

        try:
            await self.app(scope, receive, send_with_token)
        finally:
            reset_consistency(token)


def _add_token(message: Message, record: RequestConsistency) -> None:
    value = format_token(merge(record.required, record.written))
    headers = MutableHeaders(scope=message)
    headers.append(TOKEN_HEADER, value)
    headers.append(
        "set-cookie", f"{TOKEN_COOKIE}={value}; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"
    )


_TOKEN_HEADER_KEY = TOKEN_HEADER.lower().encode("latin-1")
_NO_MARKS: dict[str, Mark] = {}


def _sent_marks(scope: Scope) -> dict[str, Mark]:
    """The positions of the token the request sent (header first, then cookie); shared
    between requests, so never to be changed."""
    cookies = None
    for key, value in scope["headers"]:
        if key == _TOKEN_HEADER_KEY:
            return _parsed(value.decode("latin-1"))
        if key == b"cookie":
            cookies = value.decode("latin-1")
    if not cookies or TOKEN_COOKIE not in cookies:
        return _NO_MARKS
    for part in cookies.split(";"):
        name, _, value = part.strip().partition("=")
        if name == TOKEN_COOKIE:
            return _parsed(value)
    return _NO_MARKS


@functools.lru_cache(maxsize=1024)
def _parsed(raw: str) -> dict[str, Mark]:
    # A client sends the same token again and again: parse it once.
    try:
        return parse_token(raw)
    except ValueError:
        return _NO_MARKS  # a malformed token only costs the client its read-your-writes


def _database_names(routes: Iterable[Any], overrides: dict[Any, Any]) -> Iterator[str | None]:
    for route in routes:
        if isinstance(route, (APIRoute, APIWebSocketRoute)):
            yield from _names_in(route.dependant, overrides)
        elif isinstance(route, Mount):
            yield from _database_names(route.routes, overrides)
        elif hasattr(route, "original_router"):
            # A router added with include_router, kept apart from the app's own routes.
            context = getattr(route, "include_context", None)
            for depends in getattr(context, "dependencies", ()):
                router_level = Dependant(
                    dependencies=[get_dependant(path="", call=depends.dependency)]
                )
                yield from _names_in(router_level, overrides)
            yield from _database_names(route.original_router.routes, overrides)


def _names_in(dependant: Dependant, overrides: dict[Any, Any]) -> Iterator[str | None]:
    for dependency in dependant.dependencies:
        call = dependency.call
        if call in overrides:
            continue
        if call is provide_tenant:
            yield _TENANT
        elif hasattr(call, _DATABASE_ATTRIBUTE):
            yield getattr(call, _DATABASE_ATTRIBUTE)
        else:
            yield from _names_in(dependency, overrides)


def build_health_router(router: DatabaseRouter, *, path: str) -> APIRouter:
    """An `APIRouter` with ``GET path``: the health report, 200 when healthy, else 503."""
    api = APIRouter(tags=["health"])

    @api.get(path, summary="Database health")
    async def database_health() -> JSONResponse:
        report = await router.check()
        return JSONResponse(report.as_dict(), status_code=200 if report.ok else 503)

    return api
