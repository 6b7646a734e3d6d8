"""The registry of named databases: one engine and one sessionmaker per configured name."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from .engines import SessionFactory, build_engine, build_sessionmaker
from .errors import RouterClosedError, UnknownDatabaseError
from .leases import Leases
from .settings import DatabaseSettings


@dataclass(frozen=True, slots=True)
class Database:
    """A configured database with its engine and sessionmaker."""

    name: str
    settings: DatabaseSettings
    engine: AsyncEngine
    sessionmaker: SessionFactory
    leases: Leases = field(default_factory=Leases, compare=False)
    """The sessions open on this database right now."""

    @property
    def is_replica(self) -> bool:
        """Whether this database replicates another one (and so only serves reads)."""
        return self.settings.replica_of is not None


logger = logging.getLogger("dbrouter")


class DatabaseRegistry(Mapping[str, Database]):
    """Named databases, built once; closed for good by `dispose`.

    Engines connect lazily, so building the registry does no I/O.
    """

    def __init__(self, databases: Mapping[str, DatabaseSettings]) -> None:
        self._databases: dict[str, Database] = {}
        replicated = {settings.replica_of for settings in databases.values()}
        for name, settings in databases.items():
            engine = build_engine(settings, name=name)
            sessions = build_sessionmaker(engine, name, note_commits=name in replicated)
            self._databases[name] = Database(name, settings, engine, sessions)
        self._closed = False

    def __getitem__(self, name: str) -> Database:
        if self._closed:
            raise RouterClosedError()
        try:
            return self._databases[name]
        except KeyError:
            raise UnknownDatabaseError(name, self._databases) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._databases)

    def __len__(self) -> int:
        return len(self._databases)

    def __contains__(self, name: object) -> bool:
        return name in self._databases

    @property
    def closed(self) -> bool:
        """Whether `dispose` was called."""
        return self._closed

    async def dispose(self, *, timeout: float = 10.0) -> None:
        """Refuse new sessions, let open ones finish (up to *timeout* seconds), then close
        every connection of every engine. Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(drain_and_dispose(db, timeout) for db in self._databases.values()))


async def drain_and_dispose(database: Database, timeout: float | None = None) -> None:
    """Stop *database* taking sessions, wait for the open ones (at most *timeout* seconds;
    None: as long as they take), then close every connection of its engine."""
    database.leases.retire()
    if not await database.leases.drained(timeout):
        logger.warning(
            "dbrouter: disposing database %r while %d session(s) still use it",
            database.name,
            database.leases.count,
        )
    await database.engine.dispose()
