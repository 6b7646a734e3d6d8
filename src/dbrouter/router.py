"""`DatabaseRouter`: the one object an application holds; every database goes through it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from .engines import SessionFactory
from .health import HealthReport, check_databases
from .outages import as_unavailable
from .registry import Database, DatabaseRegistry
from .settings import RouterSettings
from .urls import render

if TYPE_CHECKING:
    from fastapi import APIRouter

logger = logging.getLogger("dbrouter")


class DatabaseRouter:
    """Holds an engine and a sessionmaker per configured database and hands out sessions.

    Building a router does no I/O; engines connect on first use. `dispose` closes every
    connection, after which every method raises `RouterClosedError`.
    """

    def __init__(self, settings: RouterSettings) -> None:
        self._settings = settings
        self._registry = DatabaseRegistry(settings.databases)

    @classmethod
    def from_env(cls, **overrides: Any) -> DatabaseRouter:
        """A router configured from ``DBROUTER_*`` variables and ``.env``; *overrides* win."""
        return cls(RouterSettings(**overrides))

    @property
    def settings(self) -> RouterSettings:
        """The validated configuration."""
        return self._settings

    @property
    def names(self) -> frozenset[str]:
        """The configured database names."""
        return frozenset(self._registry)

    @property
    def closed(self) -> bool:
        """Whether `dispose` was called."""
        return self._registry.closed

    def database(self, name: str | None = None) -> Database:
        """The database *name* (default: ``settings.default_database``)."""
        return self._registry[self._settings.default_database if name is None else name]

    def engine(self, name: str | None = None) -> AsyncEngine:
        """The engine of database *name*."""
        return self.database(name).engine

    def sessionmaker(self, name: str | None = None) -> SessionFactory:
        """The sessionmaker of database *name*."""
        return self.database(name).sessionmaker

    @asynccontextmanager
    async def session(
        self, name: str | None = None, *, commit: bool = False
    ) -> AsyncIterator[AsyncSession]:
        """A session on database *name* for code outside requests (workers, scripts).

        Rolls back if the block raises and always closes. With ``commit=True`` it commits
        when the block ends without an error. An unreachable database or an exhausted pool
        raises `DatabaseUnavailableError`.
        """
        database = self.database(name)
        database.leases.acquire()
        try:
            async with database.sessionmaker() as session:
                try:
                    yield session
                    if commit:
                        await session.commit()
                except BaseException as exc:
                    await _rollback_quietly(session)
                    unavailable = as_unavailable(exc, database.name)
                    if unavailable is not None and unavailable is not exc:
                        raise unavailable from exc
                    raise
        finally:
            database.leases.release()

    async def check(self) -> HealthReport:
        """Ping every database and report status, latency and pool figures."""
        return await check_databases(self._registry[name] for name in self._registry)

    async def dispose(self, *, timeout: float = 10.0) -> None:
        """Close every connection of every engine; the router cannot be used afterwards.

        Sessions already open may finish first, for up to *timeout* seconds.
        """
        await self._registry.dispose(timeout=timeout)

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[dict[str, Any]]:
        """For ``FastAPI(lifespan=router.lifespan)``.

        On startup it checks that every database the app's routes name is configured
        (an unknown name stops the startup) and makes the router reachable from requests.
        On shutdown it disposes every engine.
        """
        from .fastapi import attach_router

        state = attach_router(self, app)
        for name in sorted(self._registry):
            logger.info(
                "dbrouter: database %r at %s", name, render(self.database(name).settings.url)
            )
        try:
            yield state
        finally:
            await self.dispose()

    def health_router(self, *, path: str = "/health/databases") -> APIRouter:
        """An `APIRouter` serving the health report at *path* (200 healthy, 503 not)."""
        from .fastapi import build_health_router

        return build_health_router(self, path=path)


async def _rollback_quietly(session: AsyncSession) -> None:
    # A rollback on a broken connection fails too; the original error is the one to raise,
    # and closing the session invalidates the connection anyway.
    try:
        await session.rollback()
    except Exception:
        logger.debug("dbrouter: rollback failed after an error", exc_info=True)
