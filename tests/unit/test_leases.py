"""`Leases`: the count of sessions holding an engine, retirement, and waiting for none."""

from __future__ import annotations

import asyncio
import time

from dbrouter.leases import Leases


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def within(waiting: asyncio.Task[bool]) -> bool:
    """*waiting*'s answer, which must come soon: a wait that never ends fails the test."""
    return await asyncio.wait_for(waiting, 5)


def test_acquire_and_release_count_the_holders() -> None:
    leases = Leases()
    assert leases.count == 0
    assert leases.acquire()
    assert leases.acquire()
    assert leases.count == 2
    leases.release()
    assert leases.count == 1
    leases.release()
    assert leases.count == 0


def test_retired_leases_refuse_new_holders_and_keep_the_old_ones() -> None:
    leases = Leases()
    assert leases.acquire()
    assert not leases.retired
    leases.retire()
    assert leases.retired
    assert not leases.acquire()
    assert leases.count == 1  # the refused one holds nothing
    leases.release()
    assert leases.count == 0
    assert not leases.acquire()
    assert leases.count == 0


async def test_drained_is_immediate_when_nobody_holds() -> None:
    leases = Leases()
    assert await asyncio.wait_for(leases.drained(None), 5)
    assert await leases.drained(0)
    leases.retire()
    assert await asyncio.wait_for(leases.drained(None), 5)


async def test_drained_waits_for_the_last_release() -> None:
    leases = Leases()
    leases.acquire()
    leases.acquire()
    waiting = asyncio.create_task(leases.drained(None))
    await settle()
    assert not waiting.done()
    leases.release()
    await settle()
    assert not waiting.done()
    leases.release()
    assert await within(waiting)


async def test_every_waiter_wakes_when_drained() -> None:
    leases = Leases()
    leases.acquire()
    waiters = [asyncio.create_task(leases.drained(timeout)) for timeout in (None, 5, None)]
    await settle()
    leases.release()
    assert [await within(waiter) for waiter in waiters] == [True, True, True]


async def test_drained_gives_up_after_its_timeout() -> None:
    leases = Leases()
    leases.acquire()
    started = time.monotonic()
    assert not await leases.drained(0.05)
    assert 0.05 <= time.monotonic() - started < 1
    assert leases.count == 1
    # A wait that gave up does not spoil the next one.
    waiting = asyncio.create_task(leases.drained(5))
    await settle()
    leases.release()
    assert await within(waiting)


async def test_drained_waits_again_once_holders_come_back() -> None:
    leases = Leases()
    leases.acquire()
    first = asyncio.create_task(leases.drained(None))
    await settle()
    leases.release()
    assert await within(first)
    # Held again: the earlier "drained" must not answer for now.
    leases.acquire()
    assert not await leases.drained(0.05)
    second = asyncio.create_task(leases.drained(None))
    await settle()
    assert not second.done()
    leases.release()
    assert await within(second)
