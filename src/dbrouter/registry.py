"""The registry of named databases: one engine and one sessionmaker per configured name."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping

from .databases import Database
from .engines import EngineFactory
from .errors import UnknownDatabaseError
from .events import EventBus
from .lifecycle import Lifecycle
from .logs import log_events
from .settings import DatabaseSettings

__all__ = ["Database", "DatabaseRegistry"]


class DatabaseRegistry(Mapping[str, Database]):
    """Named databases, built once by *factory*; they refuse to lend once *lifecycle* is
    closing.

    Engines connect lazily, so building the registry does no I/O. Without a *factory* the
    registry makes its own, logging through the ``dbrouter`` logger.
    """

    def __init__(
        self,
        databases: Mapping[str, DatabaseSettings],
        *,
        factory: EngineFactory | None = None,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.lifecycle = lifecycle or Lifecycle()
        if factory is None:
            events = EventBus()
            log_events(events)
            factory = EngineFactory(events=events, lifecycle=self.lifecycle)
        self.factory = factory
        replicated = {settings.replica_of for settings in databases.values()}
        self._databases: dict[str, Database] = {
            name: factory.build(name, settings, note_commits=name in replicated)
            for name, settings in databases.items()
        }

    def __getitem__(self, name: str) -> Database:
        self.lifecycle.check()
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
        """Whether the registry refuses to lend (the router is closing or closed)."""
        return not self.lifecycle.usable

    async def dispose(self, *, timeout: float = 10.0) -> None:
        """Refuse new sessions, let open ones finish (up to *timeout* seconds), then close
        every connection of every engine. Calling it again does nothing."""
        if not self.lifecycle.begin_closing():
            return
        await self.dispose_engines(timeout)
        self.lifecycle.closed()

    async def dispose_engines(self, timeout: float) -> None:
        """Drain and dispose every engine (the lifecycle is the caller's business)."""
        await asyncio.gather(
            *(self.factory.dispose(db, timeout) for db in self._databases.values())
        )
