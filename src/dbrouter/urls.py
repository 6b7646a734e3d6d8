"""Database URLs: parsing, the async driver, and rendering without the password."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from .errors import ConfigurationError

# The backend's name in a URL -> (the driver used when none is named, what to suggest).
_ASYNC_DEFAULTS: dict[str, tuple[str | None, str]] = {
    "postgresql": ("asyncpg", "postgresql+asyncpg://"),
    "postgres": ("asyncpg", "postgresql+asyncpg://"),
    "sqlite": ("aiosqlite", "sqlite+aiosqlite://"),
    "mysql": (None, "mysql+asyncmy:// or mysql+aiomysql://"),
    "mariadb": (None, "mariadb+asyncmy:// or mariadb+aiomysql://"),
    "oracle": (None, "oracle+oracledb_async://"),
    "mssql": (None, "mssql+aioodbc://"),
}


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
    backend = url.get_backend_name()
    default_driver, suggestion = _ASYNC_DEFAULTS.get(backend, (None, ""))
    if backend == "postgres":
        url = url.set(drivername="postgresql")
        backend = "postgresql"
    if "+" not in url.drivername and default_driver is not None:
        url = url.set(drivername=f"{backend}+{default_driver}")
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        raise ConfigurationError(
            f"{where}unknown database backend or driver {url.drivername!r} "
            f"in {render(url)}; use postgresql+asyncpg:// or sqlite+aiosqlite://"
        ) from None
    if not dialect.get_async_dialect_cls(url).is_async:
        instead = f"; use {suggestion} instead" if suggestion else ""
        raise ConfigurationError(
            f"{where}the driver {url.get_driver_name()!r} in {render(url)} is synchronous "
            f"and cannot serve an async engine{instead}"
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
