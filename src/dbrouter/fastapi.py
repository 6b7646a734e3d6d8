"""The FastAPI edge: dependencies, startup checks, HTTP status mapping, the health route.

This is the only module that imports FastAPI; the rest of dbrouter takes plain values.
"""

# No ``from __future__ import annotations``: FastAPI reads these annotations at runtime,
# and the committing dependency refers to a local variable.
import functools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, APIWebSocketRoute
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.routing import Mount

from .errors import ConfigurationError, DatabaseUnavailableError, RouterClosedError
from .router import DatabaseRouter

STATE_KEY = "dbrouter"
"""The key of the router in the lifespan state (``request.state.dbrouter``)."""

_DATABASE_ATTRIBUTE = "__dbrouter_database__"

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


def attach_router(router: DatabaseRouter, app: Any) -> dict[str, Any]:
    """Check *app*'s routes against *router* and make the router reachable from requests.

    Every database named by a ``get_db(...)`` in the app's routes must be configured;
    otherwise startup stops with a `ConfigurationError` naming it and the configured names.
    """
    if router.closed:
        raise RouterClosedError()
    overrides = getattr(app, "dependency_overrides", {})
    for name in set(_database_names(getattr(app, "routes", ()), overrides)):
        try:
            router.database(name)
        except LookupError as exc:
            raise ConfigurationError(f"the app uses get_db({name!r}): {exc}") from None
    state = getattr(app, "state", None)
    if state is not None:
        setattr(state, STATE_KEY, router)
    return {STATE_KEY: router}


def _database_names(routes: Iterable[Any], overrides: dict[Any, Any]) -> Iterator[str | None]:
    for route in routes:
        if isinstance(route, (APIRoute, APIWebSocketRoute)):
            yield from _names_in(route.dependant, overrides)
        elif isinstance(route, Mount):
            yield from _database_names(route.routes, overrides)


def _names_in(dependant: Dependant, overrides: dict[Any, Any]) -> Iterator[str | None]:
    for dependency in dependant.dependencies:
        call = dependency.call
        if call in overrides:
            continue
        if hasattr(call, _DATABASE_ATTRIBUTE):
            yield getattr(call, _DATABASE_ATTRIBUTE)
            continue
        yield from _names_in(dependency, overrides)


def build_health_router(router: DatabaseRouter, *, path: str) -> APIRouter:
    """An `APIRouter` with ``GET path``: the health report, 200 when healthy, else 503."""
    api = APIRouter(tags=["health"])

    @api.get(path, summary="Database health")
    async def database_health() -> JSONResponse:
        report = await router.check()
        return JSONResponse(report.as_dict(), status_code=200 if report.ok else 503)

    return api
