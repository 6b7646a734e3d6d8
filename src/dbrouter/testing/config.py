"""The plugin's configuration: where the application is, which servers the tests use, and
what each test's ``dbrouter`` marker asks for.

Every option can be given on the command line, in the pytest configuration (ini, toml)
and, for the servers, in the environment; the command line wins, then the environment.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import pytest

from ..errors import ConfigurationError
from ..router import DatabaseRouter
from .isolation import Declaration

__all__ = [
    "MARKER_ARGUMENTS",
    "POSTGRES_URL_ENV",
    "STANDBY_URL_ENV",
    "Marks",
    "PluginOptions",
    "find_router",
    "load",
    "marks_of",
]

POSTGRES_URL_ENV = "DBROUTER_TEST_POSTGRES_URL"
"""The environment variable naming the PostgreSQL server of the tests."""
STANDBY_URL_ENV = "DBROUTER_TEST_STANDBY_URL"
"""The environment variable naming a streaming standby of that server."""
MARKER_ARGUMENTS = ("databases", "mirror", "tenants")
"""What ``@pytest.mark.dbrouter(...)`` takes."""
_ALL = "__all__"


@dataclass(frozen=True, slots=True)
class PluginOptions:
    """The plugin's options, as configured."""

    app: str | None
    """``module:attribute`` of the FastAPI app (``dbrouter_app``)."""
    router: str | None
    """``module:attribute`` of the application's router (``dbrouter_router``)."""
    postgres_url: str | None
    """The test server (``dbrouter_postgres_url``); None: a throwaway one."""
    standby_url: str | None
    """A streaming standby of the test server (``dbrouter_standby_url``)."""
    guard: bool
    """Whether every test may touch only the databases it declares (``dbrouter_guard``)."""
    metadata: str | None
    """``module:attribute`` of the SQLAlchemy metadata to create tables from."""

    @classmethod
    def of(cls, config: pytest.Config) -> PluginOptions:
        """The options of *config*."""
        return cls(
            app=_option(config, "dbrouter_app"),
            router=_option(config, "dbrouter_router"),
            postgres_url=_option(config, "dbrouter_postgres_url", POSTGRES_URL_ENV),
            standby_url=_option(config, "dbrouter_standby_url", STANDBY_URL_ENV),
            guard=_flag(config, "dbrouter_guard"),
            metadata=_option(config, "dbrouter_metadata"),
        )


def _option(config: pytest.Config, name: str, env: str | None = None) -> str | None:
    given = config.getoption(name, default=None)
    if not given and env is not None:
        given = os.environ.get(env)
    if not given:
        given = config.getini(name)
    return str(given).strip() or None if given else None


def _flag(config: pytest.Config, name: str) -> bool:
    value = config.getini(name)
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


def load(path: str, option: str) -> Any:
    """The object *path* names, as ``module:attribute`` (attributes may be dotted)."""
    module_name, colon, attribute = path.partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigurationError(
            f"{option}: {path!r} is not module:attribute, as in myapp.main:app"
        )
    try:
        found: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise  # the module exists; something it imports does not
        raise ConfigurationError(
            f"{option}: there is no module {module_name!r} (from {path!r}); is the project "
            "importable from where pytest runs (pythonpath, an installed package)?"
        ) from None
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigurationError(
                f"{option}: {module_name!r} has no attribute {attribute!r} (from {path!r})"
            ) from None
    return found


def find_router(options: PluginOptions, app: Any) -> DatabaseRouter:
    """The application's router: ``dbrouter_router``, or the router whose lifespan *app*
    runs (``FastAPI(lifespan=router.lifespan)``)."""
    if options.router is not None:
        found: DatabaseRouter = load(options.router, "dbrouter_router")
        return found
    if app is None:
        raise ConfigurationError(
            "dbrouter: name the application's router or app: dbrouter_router = "
            "myapp.db:router or dbrouter_app = myapp.main:app in the pytest configuration "
            "(or --dbrouter-router / --dbrouter-app), or override the dbrouter_router fixture"
        )
    lifespan = getattr(getattr(app, "router", None), "lifespan_context", None)
    router = getattr(lifespan, "__self__", None)
    if not isinstance(router, DatabaseRouter):
        raise ConfigurationError(
            "dbrouter_app: the app's lifespan is not a router's (FastAPI(lifespan="
            "router.lifespan)), so the router cannot be found from it; name it as well: "
            "dbrouter_router = myapp.db:router"
        )
    return router


@dataclass(frozen=True, slots=True)
class Marks:
    """What a test's ``dbrouter`` marker asks for."""

    mirror: bool = True
    """Whether replicas read their primary's connection."""
    declaration: Declaration | None = None
    """What the test may touch; None: anything (the guard is off)."""


def marks_of(
    item: pytest.Item,
    *,
    guard: bool,
    databases: Collection[str],
    default_database: str,
) -> Marks:
    """The marks of *item*: ``@pytest.mark.dbrouter(databases=[...], tenants=[...],
    mirror=False)``. With *guard* (or a marker that declares), the test may touch only
    what it declares: by default the default database and no tenant."""
    marker = item.get_closest_marker("dbrouter")
    given: dict[str, Any] = {} if marker is None else dict(marker.kwargs)
    if marker is not None and marker.args:
        raise ConfigurationError(
            f"@pytest.mark.dbrouter takes keyword arguments only ({', '.join(MARKER_ARGUMENTS)}),"
            f" not {marker.args!r}"
        )
    unknown = sorted(set(given) - set(MARKER_ARGUMENTS))
    if unknown:
        raise ConfigurationError(
            f"@pytest.mark.dbrouter: unknown argument {unknown[0]!r}; valid arguments: "
            f"{', '.join(MARKER_ARGUMENTS)}"
        )
    mirror = given.get("mirror", True)
    if not isinstance(mirror, bool):
        raise ConfigurationError(
            f"@pytest.mark.dbrouter: mirror must be True or False, not {mirror!r}"
        )
    declared = "databases" in given or "tenants" in given
    if not (guard or declared):
        return Marks(mirror=mirror)
    named = _names(given.get("databases", [default_database]), "databases")
    if named is not None:
        strangers = sorted(named - set(databases))
        if strangers:
            raise ConfigurationError(
                f"@pytest.mark.dbrouter: databases names {strangers[0]!r}, which the router "
                f"does not have; configured: {', '.join(sorted(databases))}"
            )
    tenants = _names(given.get("tenants", []), "tenants")
    return Marks(mirror=mirror, declaration=Declaration(databases=named, tenants=tenants))


def _names(value: Any, argument: str) -> frozenset[str] | None:
    if value == _ALL:
        return None
    if isinstance(value, (list, tuple, set, frozenset)) and all(
        isinstance(name, str) for name in value
    ):
        return frozenset(value)
    raise ConfigurationError(
        f"@pytest.mark.dbrouter: {argument} must be a list of names or {_ALL!r}, not {value!r}"
    )
