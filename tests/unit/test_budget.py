"""`ConnectionBudget.acquire` and `release` on their own: slots up to the limit, waiters
served first come first served, timeouts, cancellations and the races between them."""

from __future__ import annotations

import asyncio
import time

import pytest

from dbrouter.budget import ConnectionBudget
from dbrouter.errors import BudgetExhaustedError, DatabaseUnavailableError
from dbrouter.events import BudgetExhausted, BudgetWaited, Event, EventBus

KEY = 1
OTHER_KEY = 2


def assert_no_waiter(budget: ConnectionBudget) -> None:
    """Nothing is left queued or counted as waiting."""
    assert not budget._waiters
    assert not budget._waiting


async def settle() -> None:
    """Let every task that can run, run until it waits."""
    for _ in range(5):
        await asyncio.sleep(0)


def recorded(events: EventBus) -> list[Event]:
    seen: list[Event] = []
    events.subscribe(BudgetWaited, seen.append)
    events.subscribe(BudgetExhausted, seen.append)
    return seen


async def test_slots_are_taken_at_once_up_to_the_limit() -> None:
    budget = ConnectionBudget(3)
    for expected in (1, 2, 3):
        await budget.acquire("primary", 0, KEY)
        assert budget.open == expected
    for expected in (2, 1, 0):
        budget.release()
        assert budget.open == expected
    assert_no_waiter(budget)


async def test_waiters_get_released_slots_first_come_first_served() -> None:
    budget = ConnectionBudget(1)
    await budget.acquire("primary", 1, KEY)
    served: list[str] = []

    async def take(name: str) -> None:
        await budget.acquire(name, 5, KEY)
        served.append(name)

    tasks = [asyncio.create_task(take(name)) for name in ("first", "second", "third")]
    await settle()
    assert served == []
    assert len(budget._waiters) == 3
    assert budget._waiting[KEY] == 3
    for expected in (["first"], ["first", "second"], ["first", "second", "third"]):
        budget.release()
        await settle()
        assert served == expected
        assert budget.open == 1  # handed over, never returned to the free slots
    await asyncio.gather(*tasks)
    assert_no_waiter(budget)
    budget.release()
    assert budget.open == 0


async def test_a_waiter_that_times_out_raises_and_leaves_no_trace() -> None:
    events = EventBus()
    seen = recorded(events)
    budget = ConnectionBudget(1, events=events)
    await budget.acquire("primary", 1, KEY)
    started = time.monotonic()
    with pytest.raises(BudgetExhaustedError) as raised:
        await budget.acquire("reports", 0.05, OTHER_KEY)
    assert 0.05 <= time.monotonic() - started < 1
    error = raised.value
    assert isinstance(error, DatabaseUnavailableError)
    assert error.name == "reports"
    assert error.reason == "all 1 connections of max_connections are in use"
    assert seen == [BudgetExhausted("reports")]
    assert budget.open == 1
    assert_no_waiter(budget)
    # The slot goes back to the free ones, not to the waiter that gave up.
    budget.release()
    assert budget.open == 0
    await budget.acquire("reports", 0, OTHER_KEY)
    assert budget.open == 1
    assert seen == [BudgetExhausted("reports")]


async def test_a_waiter_timing_out_in_the_middle_keeps_the_order_of_the_others() -> None:
    budget = ConnectionBudget(1)
    await budget.acquire("primary", 1, KEY)
    first = asyncio.create_task(budget.acquire("first", 5, KEY))
    impatient = asyncio.create_task(budget.acquire("impatient", 0.05, KEY))
    last = asyncio.create_task(budget.acquire("last", 5, KEY))
    with pytest.raises(BudgetExhaustedError):
        await impatient
    assert len(budget._waiters) == 2
    budget.release()
    await settle()
    assert first.done()
    assert not last.done()
    budget.release()
    await last
    assert budget.open == 1
    assert_no_waiter(budget)


async def test_a_slot_arriving_as_time_runs_out_is_kept() -> None:
    events = EventBus()
    seen = recorded(events)
    budget = ConnectionBudget(1, events=events)
    await budget.acquire("primary", 1, KEY)
    loop = asyncio.get_running_loop()
    waiter = asyncio.create_task(budget.acquire("reports", 0.05, OTHER_KEY))
    await settle()
    # Both the timeout and the release fall due while the loop is blocked, so they run in
    # the same pass of the loop, the timeout first: the waiter sees its time run out with
    # the slot already handed to it.
    loop.call_later(0.06, budget.release)
    loop.call_soon(time.sleep, 0.15)
    await waiter
    assert BudgetExhausted("reports") not in seen
    assert budget.open == 1
    assert_no_waiter(budget)
    budget.release()
    assert budget.open == 0


async def test_a_cancelled_waiter_leaves_no_slot_lost() -> None:
    budget = ConnectionBudget(1)
    await budget.acquire("primary", 1, KEY)
    cancelled = asyncio.create_task(budget.acquire("cancelled", 5, KEY))
    await settle()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert_no_waiter(budget)
    assert budget.open == 1
    budget.release()
    assert budget.open == 0


async def test_a_waiter_cancelled_as_its_slot_arrives_passes_the_slot_on() -> None:
    budget = ConnectionBudget(1)
    await budget.acquire("primary", 1, KEY)
    cancelled = asyncio.create_task(budget.acquire("cancelled", 5, KEY))
    await settle()
    next_in_line = asyncio.create_task(budget.acquire("next", 5, OTHER_KEY))
    await settle()
    cancelled.cancel()
    budget.release()  # to the cancelled waiter, which has not resumed yet
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await next_in_line
    assert budget.open == 1
    assert_no_waiter(budget)


async def test_a_waiter_cancelled_as_its_slot_arrives_frees_the_slot() -> None:
    budget = ConnectionBudget(1)
    await budget.acquire("primary", 1, KEY)
    cancelled = asyncio.create_task(budget.acquire("cancelled", 5, KEY))
    await settle()
    cancelled.cancel()
    budget.release()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert budget.open == 0
    assert_no_waiter(budget)


async def test_reclaim_is_asked_only_when_a_connection_must_wait() -> None:
    budget = ConnectionBudget(1)
    calls: list[int] = []

    def reclaim() -> bool:
        calls.append(budget.open)
        return False

    budget.reclaim = reclaim
    await budget.acquire("primary", 1, KEY)
    assert calls == []
    with pytest.raises(BudgetExhaustedError):
        await budget.acquire("primary", 0.01, KEY)
    assert calls == [1]


async def test_a_slot_reclaimed_at_once_serves_the_waiter_without_a_timeout() -> None:
    events = EventBus()
    seen = recorded(events)
    budget = ConnectionBudget(1, events=events)

    def reclaim() -> bool:
        # As an idle engine evicted here would: its connection closes, its slot frees.
        budget.release()
        return True

    budget.reclaim = reclaim
    await budget.acquire("primary", 1, KEY)
    await budget.acquire("reports", 0.01, OTHER_KEY)
    assert budget.open == 1
    assert_no_waiter(budget)
    assert len(seen) == 1
    assert isinstance(seen[0], BudgetWaited)
    assert seen[0].name == "reports"


async def test_a_wait_that_ends_with_a_slot_is_reported_with_its_duration() -> None:
    events = EventBus()
    seen = recorded(events)
    budget = ConnectionBudget(1, events=events)
    await budget.acquire("primary", 1, KEY)
    assert seen == []  # no wait, no event
    waiter = asyncio.create_task(budget.acquire("reports", 5, OTHER_KEY))
    await asyncio.sleep(0.05)
    budget.release()
    await waiter
    assert len(seen) == 1
    event = seen[0]
    assert isinstance(event, BudgetWaited)
    assert event.name == "reports"
    assert 0.04 <= event.seconds < 5


async def test_without_an_event_bus_waits_and_timeouts_work_alike() -> None:
    budget = ConnectionBudget(1)
    await budget.acquire("primary", 1, KEY)
    waiter = asyncio.create_task(budget.acquire("reports", 5, KEY))
    await settle()
    budget.release()
    await waiter
    with pytest.raises(BudgetExhaustedError):
        await budget.acquire("reports", 0.01, KEY)
    assert budget.open == 1
