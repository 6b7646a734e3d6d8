"""Single flight: concurrent calls for one key share one run of the work."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

K = TypeVar("K")
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """The first caller for a key starts the work; callers arriving meanwhile await the same
    result (or exception). Nothing is remembered once the run ends.

    The work runs in a task of its own: a caller that is cancelled stops waiting, and
    neither the work nor the other callers notice.
    """

    def __init__(self) -> None:
        self._pending: dict[K, asyncio.Task[V]] = {}

    async def run(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        """The result of *work* for *key*, run at most once at a time per key."""
        task = self._pending.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(_awaited(work))
            self._pending[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def running(self) -> list[asyncio.Task[V]]:
        """The runs under way now."""
        return list(self._pending.values())

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        if self._pending.get(key) is task:
            del self._pending[key]
        if not task.cancelled():
            task.exception()  # retrieved, even when every caller stopped waiting


async def _awaited(work: Callable[[], Awaitable[V]]) -> V:
    return await work()
