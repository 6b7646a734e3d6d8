"""Finding the application's own router from ``module:attribute``, as the ``--app``
option of the ``dbrouter`` command does."""

from __future__ import annotations

import importlib
import os
import sys

from .errors import ConfigurationError
from .router import DatabaseRouter

__all__ = ["load_router"]

_FORMAT = "module:attribute (for example myapp.main:app or myapp.db:router)"


def load_router(spec: str) -> DatabaseRouter:
    """The `DatabaseRouter` that *spec* (``module:attribute``) names: the router itself, or
    a FastAPI app whose lifespan is ``router.lifespan``.

    The module is imported with the working directory first on ``sys.path``, as ``uvicorn``
    does; *attribute* may be dotted. Anything else is a `ConfigurationError` saying what was
    found.
    """
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigurationError(f"--app: {spec!r} is not {_FORMAT}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ConfigurationError(
                f"--app: no module {module_name!r} (looked in the working directory and on "
                "the Python path)"
            ) from None
        raise
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigurationError(
                f"--app: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    router = _router_of(found)
    if router is None:
        raise ConfigurationError(
            f"--app: {spec} is a {type(found).__name__}, not a DatabaseRouter or a FastAPI app "
            "whose lifespan is router.lifespan"
        )
    return router


def _router_of(found: object) -> DatabaseRouter | None:
    if isinstance(found, DatabaseRouter):
        return found
    # A Starlette or FastAPI app keeps its lifespan on its router: a bound router.lifespan.
    lifespan = getattr(getattr(found, "router", None), "lifespan_context", None)
    owner = getattr(lifespan, "__self__", None)
    return owner if isinstance(owner, DatabaseRouter) else None
