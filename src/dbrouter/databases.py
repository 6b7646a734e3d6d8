"""`Database`: one engine with its sessionmaker, the sessions it lends, and whether its
server can be reached."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from .errors import SessionClosedError
from .events import DatabaseRecovered, DatabaseUnavailable, EngineKind, EventBus
from .leases import Leases
from .settings import DatabaseSettings

__all__ = ["Availability", "Database", "GuardedSession", "SessionFactory"]

SessionFactory = async_sessionmaker[AsyncSession]
"""The sessionmaker type every database gets."""


class GuardedSession(Session):
    """The synchronous side of every session dbrouter lends: once its lending ends (the
    request, or the ``async with router.session()`` block), it opens no connection.

    A session kept past its request — stored by an endpoint, handed to a task that
    outlives the request — would otherwise check a connection out of a pool nobody
    watches any more, or open a new one on an engine already disposed. Ending it (`end`)
    turns it into its class's ended twin, which refuses to connect: a lent session pays
    nothing for the check.
    """

    ended: str | None = None
    """Why the session may no longer connect; None while it is lent."""

    _ended_class: ClassVar[type[GuardedSession]]

    _is_ended: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls._is_ended:
            cls._ended_class = type(f"Ended{cls.__name__}", (_EndedSession, cls), {})

    def ending(self) -> None:
        """Its lending is about to end: whatever ends its transaction next ends its use.
        Nothing to do here; a subclass may fold its clean-up into that end."""

    def end(self, why: str) -> None:
        """Refuse every connection from now on, with `SessionClosedError` (*why*)."""
        self.ended = why
        self.__class__ = self._ended_class


class _EndedSession(GuardedSession):
    # First in the method order of every ended twin.
    _is_ended = True

    def _connection_for_bind(
        self, engine: Any, execution_options: Any = None, **kw: Any
    ) -> Connection:
        raise SessionClosedError(self.ended or "this session has ended")


GuardedSession._ended_class = type("EndedGuardedSession", (_EndedSession,), {})


class Availability:
    """Whether a database's server is reachable, as last seen; reports each change of
    state (never each request) to the event bus."""

    __slots__ = ("_events", "_name", "down", "reason")

    def __init__(self, name: str, events: EventBus) -> None:
        self._name = name
        self._events = events
        self.down = False
        """Whether the last attempt to reach the server failed."""
        self.reason: str | None = None
        """Why, while down."""

    def lost(self, reason: str) -> None:
        """The server could not be reached: *reason*, in words without any secret."""
        if not self.down:
            self.down = True
            self.reason = reason
            self._events.emit(DatabaseUnavailable(self._name, reason))

    def regained(self) -> None:
        """The server answered again."""
        if self.down:
            self.down = False
            self.reason = None
            self._events.emit(DatabaseRecovered(self._name))


@dataclass(frozen=True, slots=True)
class Database:
    """A database with its engine and sessionmaker, as the engine factory built it."""

    name: str
    """Its pool name: the configured name, ``replica#2``, or ``tenant:<id>``."""
    settings: DatabaseSettings
    engine: AsyncEngine
    sessionmaker: SessionFactory
    kind: EngineKind = "database"
    leases: Leases = field(default_factory=Leases, compare=False)
    """The sessions open on this database right now."""
    availability: Availability | None = field(default=None, compare=False)
    """Whether its server is reachable; None where nobody tracks it."""
    events: EventBus | None = field(default=None, compare=False)
    """Where what happens to it is reported."""

    @property
    def is_replica(self) -> bool:
        """Whether this database replicates another one (and so only serves reads)."""
        return self.settings.replica_of is not None
