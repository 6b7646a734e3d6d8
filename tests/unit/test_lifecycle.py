"""`Lifecycle`: not opened, open, closing, closed, and the work started on open; then the
same states as a router goes through them, on SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import pytest

from dbrouter import DatabaseRouter, RouterClosedError, RouterSettings
from dbrouter.lifecycle import Lifecycle, State


def state(of: Lifecycle | DatabaseRouter) -> State:
    """The state now (a function, so that the type checker reads it afresh each time)."""
    return of.state


def starter(log: list[str], name: str) -> Callable[[], None]:
    return lambda: log.append(name)


def test_a_new_lifecycle_lends_and_has_started_nothing() -> None:
    lifecycle = Lifecycle()
    log: list[str] = []
    lifecycle.on_open(starter(log, "probe"))
    assert state(lifecycle) is State.NEW
    assert lifecycle.usable
    lifecycle.check()
    assert log == []


def test_open_runs_each_starter_once_in_order() -> None:
    lifecycle = Lifecycle()
    log: list[str] = []
    lifecycle.on_open(starter(log, "first"))
    lifecycle.on_open(starter(log, "second"))
    lifecycle.open()
    assert state(lifecycle) is State.OPEN
    assert lifecycle.usable
    lifecycle.check()
    assert log == ["first", "second"]
    lifecycle.open()
    assert log == ["first", "second"]


def test_a_starter_registered_once_open_runs_at_once_and_only_then() -> None:
    lifecycle = Lifecycle()
    log: list[str] = []
    lifecycle.open()
    lifecycle.on_open(starter(log, "late"))
    assert log == ["late"]
    lifecycle.open()
    assert log == ["late"]


def test_closing_then_closed_refuse_to_lend() -> None:
    lifecycle = Lifecycle()
    lifecycle.open()
    assert lifecycle.begin_closing()
    assert state(lifecycle) is State.CLOSING
    assert not lifecycle.usable
    with pytest.raises(RouterClosedError, match="disposed"):
        lifecycle.check()
    assert not lifecycle.begin_closing()
    lifecycle.closed()
    assert state(lifecycle) is State.CLOSED
    assert not lifecycle.usable
    with pytest.raises(RouterClosedError):
        lifecycle.check()
    assert not lifecycle.begin_closing()
    assert state(lifecycle) is State.CLOSED


def test_a_lifecycle_closed_before_it_opened_never_starts_anything() -> None:
    lifecycle = Lifecycle()
    log: list[str] = []
    lifecycle.on_open(starter(log, "probe"))
    assert lifecycle.begin_closing()
    with pytest.raises(RouterClosedError):
        lifecycle.open()
    lifecycle.closed()
    with pytest.raises(RouterClosedError):
        lifecycle.open()
    lifecycle.on_open(starter(log, "late"))
    assert log == []
    assert state(lifecycle) is State.CLOSED


def test_states_read_as_words() -> None:
    assert [state.value for state in State] == ["not opened", "open", "closing", "closed"]


# ---- a router's lifecycle --------------------------------------------------------------


def sqlite_router() -> DatabaseRouter:
    return DatabaseRouter(
        RouterSettings(
            databases={
                "primary": {"url": "sqlite://"},
                "replica": {"url": "sqlite://", "replica_of": "primary"},
            },
            tenancy={"tenants": {"acme": {"url": "sqlite://"}}},
        )
    )


async def test_a_router_is_new_then_open_then_closed() -> None:
    router = sqlite_router()
    assert state(router) is State.NEW
    assert not router.closed
    async with router as entered:
        assert entered is router
        assert state(router) is State.OPEN
        assert not router.closed
    assert state(router) is State.CLOSED
    assert router.closed


async def test_disposing_twice_is_fine() -> None:
    router = sqlite_router()
    await router.dispose()
    await router.dispose()
    assert state(router) is State.CLOSED


async def test_a_router_disposed_unopened_is_closed() -> None:
    router = sqlite_router()
    async with router.session() as session:
        await session.connection()
    await router.dispose()
    assert state(router) is State.CLOSED
    with pytest.raises(RouterClosedError):
        router.open()


async def test_a_router_is_closing_while_its_sessions_finish() -> None:
    router = sqlite_router()
    async with router:
        async with router.session() as session:
            await session.connection()
            disposing = asyncio.create_task(router.dispose())
            for _ in range(5):
                await asyncio.sleep(0)
            assert state(router) is State.CLOSING
            assert router.closed
            with pytest.raises(RouterClosedError):
                router.session()
            assert not disposing.done()
        await asyncio.wait_for(disposing, 5)
        assert state(router) is State.CLOSED


def closed_calls(router: DatabaseRouter) -> dict[str, Callable[[], object]]:
    """Every public call of *router* that must refuse once it is disposed."""
    return {
        "open": router.open,
        "database": router.database,
        "database('replica')": lambda: router.database("replica"),
        "engine": router.engine,
        "sessionmaker": router.sessionmaker,
        "session": router.session,
        "session('replica')": lambda: router.session("replica"),
        "tenancy": lambda: router.tenancy,
        "add_tenant": lambda: router.add_tenant("globex", url="sqlite://"),
        "remove_tenant": lambda: router.remove_tenant("acme"),
        "tenant_engines": router.tenant_engines,
        "replica_set": lambda: router.replica_set("replica"),
    }


def closed_coroutines(router: DatabaseRouter) -> dict[str, Callable[[], Awaitable[object]]]:
    """Every public coroutine of *router* that must refuse once it is disposed."""

    async def enter(manager: Callable[[], AbstractAsyncContextManager[object]]) -> None:
        async with manager():
            pass

    return {
        "__aenter__": router.__aenter__,
        "check": router.check,
        "list_tenants": router.list_tenants,
        "tenant_session": lambda: enter(lambda: router.tenant_session("acme")),
        "lifespan": lambda: enter(lambda: router.lifespan(object())),
    }


async def test_every_use_of_a_disposed_router_raises() -> None:
    router = sqlite_router()
    async with router, router.tenant_session("acme") as session:
        await session.connection()
    for name, call in closed_calls(router).items():
        with pytest.raises(RouterClosedError):
            call()
            pytest.fail(f"{name} did not raise")
    for name, coroutine in closed_coroutines(router).items():
        with pytest.raises(RouterClosedError):
            await coroutine()
            pytest.fail(f"{name} did not raise")
    # What it was stays readable.
    assert state(router) is State.CLOSED
    assert router.names == frozenset({"primary", "replica"})
    assert router.settings.default_database == "primary"
