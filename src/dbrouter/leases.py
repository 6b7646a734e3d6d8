"""Counting the sessions that use an engine, so it is disposed only once they are done."""

from __future__ import annotations

import asyncio


class Leases:
    """How many sessions hold an engine right now; `drained` waits for none.

    Disposing an engine does not close the connections its sessions still hold: they would
    stay open until garbage collection. Whoever disposes an engine first waits here.
    """

    __slots__ = ("_count", "_idle")

    def __init__(self) -> None:
        self._count = 0
        self._idle: asyncio.Event | None = None

    @property
    def count(self) -> int:
        """Sessions currently holding the engine."""
        return self._count

    def acquire(self) -> None:
        """One more session holds the engine."""
        self._count += 1

    def release(self) -> None:
        """A session let go of the engine."""
        self._count -= 1
        if self._count == 0 and self._idle is not None:
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until no session holds the engine; False if *timeout* seconds pass first."""
        if self._count == 0:
            return True
        if self._idle is None or self._idle.is_set():
            self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True
