"""One Alembic run at a time in a process, and the advisory lock keys of targets."""

from __future__ import annotations

import asyncio
import threading

from dbrouter.migrations import locks


def test_lock_keys_are_stable_signed_64_bit_numbers() -> None:
    key = locks.lock_key("tenant:acme")
    assert key == locks.lock_key("tenant:acme")
    assert key != locks.lock_key("tenant:acmf")
    assert -(2**63) <= key < 2**63


async def test_a_turn_waited_for_in_vain_is_not_kept() -> None:
    # Another thread's event loop holds the turn; this one waits, then is cancelled.
    taken = locks._process_turn.acquire(blocking=False)
    assert taken
    entered = threading.Event()

    async def wait_for_turn() -> None:
        async with locks.alembic_turn():
            entered.set()

    waiting = asyncio.create_task(wait_for_turn())
    await asyncio.sleep(0.05)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert waiting.cancelled()
    locks._process_turn.release()
    # The waiting thread got the turn after all, and handed it straight back.
    for _ in range(100):
        if locks._process_turn.acquire(blocking=False):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the turn was never given back")
    locks._process_turn.release()
    assert not entered.is_set()
    async with locks.alembic_turn():
        entered.set()
    assert entered.is_set()
