"""What happens inside the router, as typed events: engines built and disposed, databases
lost and recovered, replica servers in and out of rotation, tenant engines evicted, the
connection budget waited on or exhausted, token reads served.

The library reports to an `EventBus`; logging, metrics and tests subscribe to it. An event
kind nobody subscribed to costs one dictionary lookup: emitters on a hot path ask `wants`
before they build the event at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

__all__ = [
    "BudgetExhausted",
    "BudgetWaited",
    "CheckoutTimedOut",
    "ConsistencyRead",
    "DatabaseRecovered",
    "DatabaseUnavailable",
    "EngineBuilt",
    "EngineDisposed",
    "EngineKind",
    "Event",
    "EventBus",
    "ReplicaJoinedRotation",
    "ReplicaLeftRotation",
    "TenantEngineEvicted",
    "TenantLookedUp",
    "UnavailableAnswered",
]

logger = logging.getLogger("dbrouter")

EngineKind = Literal["database", "replica", "tenant", "maintenance"]
"""What an engine serves: a named database, one more server of a replica, a tenant's own
database, or a short-lived maintenance connection (listing or creating tenants)."""


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event."""


@dataclass(frozen=True, slots=True)
class EngineBuilt(Event):
    """An engine was built, by the router's engine factory."""

    name: str
    """Its pool name: the database name, ``replica#2`` for a replica's second server,
    ``tenant:<id>`` for a tenant engine."""
    kind: EngineKind


@dataclass(frozen=True, slots=True)
class EngineDisposed(Event):
    """An engine closed every connection it had, after its sessions finished."""

    name: str
    kind: EngineKind


@dataclass(frozen=True, slots=True)
class DatabaseUnavailable(Event):
    """A database (or one server of a replica) could no longer be reached; reported once
    per change of state."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class DatabaseRecovered(Event):
    """A database that was unavailable took a new connection again."""

    name: str


@dataclass(frozen=True, slots=True)
class ReplicaLeftRotation(Event):
    """A replica server stopped serving reads: down, no longer a standby, or lagging."""

    name: str
    """The server's pool name (``replica``, ``replica#2``...)."""
    reason: str


@dataclass(frozen=True, slots=True)
class ReplicaJoinedRotation(Event):
    """A replica server serves reads again."""

    name: str


@dataclass(frozen=True, slots=True)
class CheckoutTimedOut(Event):
    """No pooled connection became free within ``pool_timeout``."""

    name: str


@dataclass(frozen=True, slots=True)
class TenantEngineEvicted(Event):
    """A tenant engine left the cache (size bound, idle expiry, re-point or removal); it
    is disposed once its sessions are done."""

    tenant: str
    name: str


@dataclass(frozen=True, slots=True)
class TenantLookedUp(Event):
    """A tenant id was looked up in the catalog, the template's server or the schemas."""

    tenant: str
    found: bool


@dataclass(frozen=True, slots=True)
class BudgetWaited(Event):
    """A new connection waited for a slot of ``max_connections``, and got one."""

    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class BudgetExhausted(Event):
    """A new connection found no slot of ``max_connections`` within ``pool_timeout``."""

    name: str


@dataclass(frozen=True, slots=True)
class ConsistencyRead(Event):
    """A read carrying a consistency token was routed."""

    database: str
    """The replica's name."""
    served_by: Literal["replica", "primary"]


@dataclass(frozen=True, slots=True)
class UnavailableAnswered(Event):
    """A request was answered 503 because a database could not serve it."""

    database: str
    """The pool name of the database (``primary``, ``replica``, ``tenant:acme``)."""
    reason: str
    """Why, as one word of a fixed set: a `FailureReason` kind (``pool exhausted``,
    ``unreachable``...) or ``router closed``."""


E = TypeVar("E", bound=Event)
Handler = Callable[[E], None]


class EventBus:
    """Hands each event to the handlers subscribed to its kind, in subscription order.

    Handlers run synchronously where the event happens (sometimes inside SQLAlchemy's
    pool), so they must be quick and must not do I/O. A handler that raises is logged and
    never disturbs the code that emitted the event.
    """

    __slots__ = ("_handlers",)

    def __init__(self) -> None:
        self._handlers: dict[type[Event], list[Callable[[object], None]]] = {}

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> Callable[[], None]:
        """Call *handler* with every event of *kind*; returns a function that unsubscribes."""
        handlers = self._handlers.setdefault(kind, [])
        entry: Callable[[object], None] = handler  # type: ignore[assignment]
        handlers.append(entry)

        def unsubscribe() -> None:
            if entry in handlers:
                handlers.remove(entry)
            if not handlers and self._handlers.get(kind) is handlers:
                del self._handlers[kind]

        return unsubscribe

    def wants(self, kind: type[Event]) -> bool:
        """Whether anyone listens to *kind*: skip building the event when not."""
        return kind in self._handlers

    def emit(self, event: Event) -> None:
        """Hand *event* to its subscribers."""
        handlers = self._handlers.get(type(event))
        if not handlers:
            return
        for handler in tuple(handlers):
            try:
                handler(event)
            except Exception:
                logger.exception("dbrouter: an event handler failed on %r", event)
