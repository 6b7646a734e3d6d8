"""The lifespan: startup checks of the app's routes against the router, the router made
reachable from requests, the consistency middleware, and disposal at shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import Mount

from ..errors import ConfigurationError, RouterClosedError
from ..router import DatabaseRouter
from ..urls import render
from .dependencies import DATABASE_ATTRIBUTE, STATE_KEY, TENANT_MARK
from .middleware import ConsistencyMiddleware

__all__ = ["attach_router", "lifespan"]

logger = logging.getLogger("dbrouter")


@asynccontextmanager
async def lifespan(router: DatabaseRouter, app: Any) -> AsyncIterator[dict[str, Any]]:
    """``router.lifespan``: attach and open *router* for *app*, dispose it at shutdown."""
    state = attach_router(router, app)
    router.open()
    for name in sorted(router.names):
        logger.info(
            "dbrouter: database %r at %s", name, render(router.database(name).settings.url)
        )
    try:
        yield state
    finally:
        await router.dispose()


def attach_router(router: DatabaseRouter, app: Any) -> dict[str, Any]:
    """Check *app*'s routes against *router* and make the router reachable from requests.

    Every database named by a ``get_db(...)`` in the app's routes must be configured;
    otherwise startup stops with a `ConfigurationError` naming it and the configured names.
    """
    if router.closed:
        raise RouterClosedError()
    overrides = getattr(app, "dependency_overrides", {})
    for name in set(_database_names(getattr(app, "routes", ()), overrides)):
        if name is TENANT_MARK:
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
    if router.has_replicas and stack is not None and not isinstance(stack, ConsistencyMiddleware):
        # The stack was built for this very lifespan call; wrapping it here is what lets
        # FastAPI(lifespan=router.lifespan) alone carry tokens, with no middleware to add.
        app.middleware_stack = ConsistencyMiddleware(stack)
    return {STATE_KEY: router}


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
        if hasattr(call, DATABASE_ATTRIBUTE):
            yield getattr(call, DATABASE_ATTRIBUTE)
        else:
            yield from _names_in(dependency, overrides)
