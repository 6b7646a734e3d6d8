"""The ``dbrouter`` logger, fed from events: one WARNING when a database or replica server
becomes unavailable, one INFO when it is back, builds and evictions at DEBUG. Never a line
per request, never a password (events carry names and reasons, not URLs)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from .events import (
    BudgetExhausted,
    DatabaseRecovered,
    DatabaseUnavailable,
    EngineBuilt,
    EngineDisposed,
    EventBus,
    ReplicaJoinedRotation,
    ReplicaLeftRotation,
    TenantEngineEvicted,
)

__all__ = ["log_events"]

logger = logging.getLogger("dbrouter")


def log_events(events: EventBus) -> Callable[[], None]:
    """Log what happens on *events* through the ``dbrouter`` logger; returns a function
    that stops it."""
    unsubscribers = [
        events.subscribe(DatabaseUnavailable, _unavailable),
        events.subscribe(DatabaseRecovered, _recovered),
        events.subscribe(ReplicaLeftRotation, _left_rotation),
        events.subscribe(ReplicaJoinedRotation, _joined_rotation),
        events.subscribe(EngineBuilt, _built),
        events.subscribe(EngineDisposed, _disposed),
        events.subscribe(TenantEngineEvicted, _evicted),
        events.subscribe(BudgetExhausted, _budget_exhausted),
    ]

    def stop() -> None:
        for unsubscribe in unsubscribers:
            unsubscribe()

    return stop


def _unavailable(event: DatabaseUnavailable) -> None:
    logger.warning("dbrouter: database %r is unavailable: %s", event.name, event.reason)


def _recovered(event: DatabaseRecovered) -> None:
    logger.info("dbrouter: database %r is available again", event.name)


def _left_rotation(event: ReplicaLeftRotation) -> None:
    logger.warning("dbrouter: replica %r leaves rotation: %s", event.name, event.reason)


def _joined_rotation(event: ReplicaJoinedRotation) -> None:
    logger.info("dbrouter: replica %r is back in rotation", event.name)


def _built(event: EngineBuilt) -> None:
    logger.debug("dbrouter: built the %s engine %r", event.kind, event.name)


def _disposed(event: EngineDisposed) -> None:
    logger.debug("dbrouter: disposed the %s engine %r", event.kind, event.name)


def _evicted(event: TenantEngineEvicted) -> None:
    logger.debug("dbrouter: evicting %s", event.name)


def _budget_exhausted(event: BudgetExhausted) -> None:
    # Per request while the budget is exhausted would flood the log; DEBUG only. Metrics
    # count these.
    logger.debug("dbrouter: no connection slot for %r within its pool_timeout", event.name)
