"""Finding the application's own objects from ``module:attribute``: its router, as the
``--app`` option of the ``dbrouter`` command does, and whatever the pytest plugin is told
to load."""

from __future__ import annotations

import importlib
import os
import sys

from .errors import ConfigurationError
from .router import DatabaseRouter

__all__ = ["load", "load_router", "router_of"]

_FORMAT = "module:attribute (for example myapp.main:app or myapp.db:router)"


def load(spec: str, option: str) -> object:
    """The object *spec* (``module:attribute``, *attribute* may be dotted) names; a
    `ConfigurationError` prefixed with *option* when it names nothing."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigurationError(f"{option}: {spec!r} is not {_FORMAT}")
    try:
        found: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ConfigurationError(
                f"{option}: no module {module_name!r} (looked on the Python path: is the "
                "project importable from where it runs?)"
            ) from None
        raise  # the module exists; something it imports does not
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigurationError(
                f"{option}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    return found


def load_router(spec: str) -> DatabaseRouter:
    """The `DatabaseRouter` that *spec* (``module:attribute``) names: the router itself, or
    a FastAPI app whose lifespan is ``router.lifespan``.

    The module is imported with the working directory first on ``sys.path``, as ``uvicorn``
    does; *attribute* may be dotted. Anything else is a `ConfigurationError` saying what was
    found.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    found = load(spec, "--app")
    router = router_of(found)
    if router is None:
        raise ConfigurationError(
            f"--app: {spec} is a {type(found).__name__}, not a DatabaseRouter or a FastAPI app "
            "whose lifespan is router.lifespan"
        )
    return router


def router_of(found: object) -> DatabaseRouter | None:
    """*found* when it is a router, the router whose lifespan it runs when it is an app;
    None otherwise."""
    if isinstance(found, DatabaseRouter):
        return found
    # A Starlette or FastAPI app keeps its lifespan on its router: a bound router.lifespan.
    lifespan = getattr(getattr(found, "router", None), "lifespan_context", None)
    owner = getattr(lifespan, "__self__", None)
    return owner if isinstance(owner, DatabaseRouter) else None
