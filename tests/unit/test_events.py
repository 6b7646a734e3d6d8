"""`EventBus`: subscribing, the order of handlers, handlers that fail; and the events a
router reports as it builds and disposes engines, on SQLite."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from dbrouter import DatabaseRouter, RouterSettings
from dbrouter.events import (
    DatabaseRecovered,
    DatabaseUnavailable,
    EngineBuilt,
    EngineDisposed,
    Event,
    EventBus,
)


def test_a_handler_sees_the_events_of_its_kind_only() -> None:
    bus = EventBus()
    lost: list[DatabaseUnavailable] = []
    bus.subscribe(DatabaseUnavailable, lost.append)
    bus.emit(DatabaseRecovered("primary"))
    bus.emit(DatabaseUnavailable("primary", "unreachable"))
    bus.emit(EngineBuilt("primary", "database"))
    assert lost == [DatabaseUnavailable("primary", "unreachable")]


def test_a_handler_of_the_base_kind_is_not_handed_every_event() -> None:
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(Event, seen.append)
    bus.emit(DatabaseRecovered("primary"))
    assert seen == []
    bus.emit(Event())
    assert seen == [Event()]


def test_emitting_with_nobody_subscribed_does_nothing() -> None:
    bus = EventBus()
    bus.emit(DatabaseRecovered("primary"))
    assert not bus.wants(DatabaseRecovered)


def test_handlers_run_in_subscription_order() -> None:
    bus = EventBus()
    order: list[str] = []

    def noting(name: str) -> Callable[[DatabaseRecovered], None]:
        return lambda _: order.append(name)

    for name in ("first", "second", "third"):
        bus.subscribe(DatabaseRecovered, noting(name))
    bus.emit(DatabaseRecovered("primary"))
    assert order == ["first", "second", "third"]


def test_unsubscribing_stops_one_handler_and_may_be_repeated() -> None:
    bus = EventBus()
    kept: list[Event] = []
    dropped: list[Event] = []
    bus.subscribe(DatabaseRecovered, kept.append)
    unsubscribe = bus.subscribe(DatabaseRecovered, dropped.append)
    bus.emit(DatabaseRecovered("one"))
    unsubscribe()
    unsubscribe()
    bus.emit(DatabaseRecovered("two"))
    assert kept == [DatabaseRecovered("one"), DatabaseRecovered("two")]
    assert dropped == [DatabaseRecovered("one")]
    assert bus.wants(DatabaseRecovered)


def test_the_same_handler_twice_is_called_twice_and_unsubscribed_once_at_a_time() -> None:
    bus = EventBus()
    seen: list[Event] = []
    first = bus.subscribe(DatabaseRecovered, seen.append)
    bus.subscribe(DatabaseRecovered, seen.append)
    bus.emit(DatabaseRecovered("primary"))
    assert len(seen) == 2
    first()
    bus.emit(DatabaseRecovered("primary"))
    assert len(seen) == 3


def test_wants_tells_whether_anyone_listens() -> None:
    bus = EventBus()
    assert not bus.wants(EngineBuilt)
    first = bus.subscribe(EngineBuilt, lambda _: None)
    second = bus.subscribe(EngineBuilt, lambda _: None)
    assert bus.wants(EngineBuilt)
    assert not bus.wants(EngineDisposed)
    first()
    assert bus.wants(EngineBuilt)
    second()
    assert not bus.wants(EngineBuilt)
    # Subscribing again after the last one left works as the first time.
    seen: list[Event] = []
    bus.subscribe(EngineBuilt, seen.append)
    assert bus.wants(EngineBuilt)
    bus.emit(EngineBuilt("primary", "database"))
    assert seen == [EngineBuilt("primary", "database")]
    first()  # a stale unsubscribe leaves the new subscriber alone
    assert bus.wants(EngineBuilt)


def test_a_handler_unsubscribing_while_called_does_not_skip_the_next() -> None:
    bus = EventBus()
    order: list[str] = []

    def once(_: DatabaseRecovered) -> None:
        order.append("once")
        unsubscribe()

    unsubscribe = bus.subscribe(DatabaseRecovered, once)
    bus.subscribe(DatabaseRecovered, lambda _: order.append("always"))
    bus.emit(DatabaseRecovered("primary"))
    bus.emit(DatabaseRecovered("primary"))
    assert order == ["once", "always", "always"]


def test_a_failing_handler_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()
    seen: list[str] = []

    def failing(_: DatabaseRecovered) -> None:
        raise RuntimeError("handler bug")

    bus.subscribe(DatabaseRecovered, lambda _: seen.append("before"))
    bus.subscribe(DatabaseRecovered, failing)
    bus.subscribe(DatabaseRecovered, lambda _: seen.append("after"))
    with caplog.at_level(logging.ERROR, logger="dbrouter"):
        bus.emit(DatabaseRecovered("primary"))  # does not raise
    assert seen == ["before", "after"]
    (record,) = caplog.records
    assert record.name == "dbrouter"
    assert record.levelno == logging.ERROR
    assert "DatabaseRecovered(name='primary')" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


# ---- a router's events -----------------------------------------------------------------


async def test_a_router_reports_engines_built_after_subscription_and_disposed() -> None:
    router = DatabaseRouter(
        RouterSettings(
            databases={"primary": {"url": "sqlite://"}},
            tenancy={"tenants": {"acme": {"url": "sqlite://"}, "globex": {"url": "sqlite://"}}},
        )
    )
    built: list[EngineBuilt] = []
    disposed: list[EngineDisposed] = []
    router.events.subscribe(EngineBuilt, built.append)
    router.events.subscribe(EngineDisposed, disposed.append)
    async with router:
        assert built == []  # the named databases were built with the router
        async with router.tenant_session("acme") as session:
            await session.connection()
        assert built == [EngineBuilt("tenant:acme", "tenant")]
        async with router.tenant_session("acme") as session:
            await session.connection()
        async with router.tenant_session("globex") as session:
            await session.connection()
        assert built == [
            EngineBuilt("tenant:acme", "tenant"),
            EngineBuilt("tenant:globex", "tenant"),
        ]
        assert disposed == []
    assert sorted(disposed, key=lambda event: event.name) == [
        EngineDisposed("primary", "database"),
        EngineDisposed("tenant:acme", "tenant"),
        EngineDisposed("tenant:globex", "tenant"),
    ]
    assert len(built) == 2
