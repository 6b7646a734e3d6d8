"""Database URLs: parsing, the async driver, and rendering without the password."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from .errors import ConfigurationError

__all__ = ["is_postgresql", "is_sqlite", "parse_url", "render"]

# The backends dbrouter serves -> (the driver used when none is named, what to suggest).
# Every suggested driver is a dependency of this package or one of its extras.
_ASYNC_DEFAULTS: dict[str, tuple[str, str]] = {
    "postgresql": (
        "asyncpg",
        "postgresql+asyncpg:// (or postgresql+psycopg:// with the 'psycopg' extra)",
    ),
    "sqlite": ("aiosqlite", "sqlite+aiosqlite://"),
}
_SUPPORTED = "postgresql:// (asyncpg, or psycopg) and sqlite:// (aiosqlite)"
_MAX_PORT = 65535


def parse_url(raw: str | URL, *, key: str | None = None) -> URL:
    """Parse *raw* and give it an async driver.

    ``postgresql://`` and ``postgres://`` become ``postgresql+asyncpg://``; ``sqlite://``
    becomes ``sqlite+aiosqlite://``. A URL naming a synchronous-only driver is a
    `ConfigurationError` that says which driver to use instead. No message ever contains
    the URL's password.
    """
    where = f"{key}: " if key else ""
    if isinstance(raw, URL):
        url = raw
    elif not isinstance(raw, str):
        raise ConfigurationError(f"{where}expected a database URL string")
    else:
        try:
            url = make_url(raw.strip())
        except (ArgumentError, ValueError):
            # SQLAlchemy's message repeats the whole string, password included.
            raise ConfigurationError(
                f"{where}not a database URL; expected the form "
                "postgresql://user:password@host:5432/dbname or sqlite:///path/to/file.db"
            ) from None
    if url.get_backend_name() == "postgres":
        url = url.set(drivername=url.drivername.replace("postgres", "postgresql", 1))
    backend = url.get_backend_name()
    if backend not in _ASYNC_DEFAULTS:
        raise ConfigurationError(
            f"{where}unsupported database backend {backend!r} in {render(url)}; "
            f"dbrouter serves {_SUPPORTED}"
        )
    default_driver, suggestion = _ASYNC_DEFAULTS[backend]
    if "+" not in url.drivername:
        url = url.set(drivername=f"{backend}+{default_driver}")
    if url.port is not None and not 1 <= url.port <= _MAX_PORT:
        raise ConfigurationError(
            f"{where}port {url.port} in {render(url)} is out of range; "
            f"a port is between 1 and {_MAX_PORT}"
        )
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        raise ConfigurationError(
            f"{where}unknown database backend or driver {url.drivername!r} "
            f"in {render(url)}; use {suggestion}"
        ) from None
    if not dialect.get_async_dialect_cls(url).is_async:
        raise ConfigurationError(
            f"{where}the driver {url.get_driver_name()!r} in {render(url)} is synchronous "
            f"and cannot serve an async engine; use {suggestion} instead"
        )
    return url


def render(url: URL) -> str:
    """The URL as text with the password replaced by ``***``."""
    return url.render_as_string(hide_password=True)


def is_sqlite(url: URL) -> bool:
    """Whether *url* names an SQLite database."""
    return url.get_backend_name() == "sqlite"


def is_postgresql(url: URL) -> bool:
    """Whether *url* names a PostgreSQL database."""
    return url.get_backend_name() == "postgresql"
