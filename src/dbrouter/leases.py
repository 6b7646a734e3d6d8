"""Counting the sessions that use an engine, so it is disposed only once they are done."""

from __future__ import annotations

import asyncio

__all__ = ["Leases"]


class Leases:
    """How many sessions hold an engine right now; `drained` waits for none.

    Disposing an engine does not close the connections its sessions still hold: they would
    stay open until garbage collection. Whoever disposes an engine first waits here.
    """

    __slots__ = ("_count", "_idle", "_retired")

    def __init__(self) -> None:
        self._count = 0
        self._idle: asyncio.Event | None = None
        self._retired = False

    @property
    def count(self) -> int:
        """Sessions currently holding the engine."""
        return self._count

    @property
    def retired(self) -> bool:
        """Whether the engine is on its way to disposal and takes no new session."""
        return self._retired

    def acquire(self) -> bool:
        """One more session holds the engine; False (and nothing held) once retired."""
        if self._retired:
            return False
        self._count += 1
        return True

    def retire(self) -> None:
        """Take no new session from now on."""
        self._retired = True

    def release(self) -> None:
        """A session let go of the engine."""
        self._count -= 1
        if self._count == 0 and self._idle is not None:
            self._idle.set()

    async def drained(self, timeout: float | None) -> bool:
        """Wait until no session holds the engine; False if *timeout* seconds pass first
        (None: wait as long as it takes)."""
        if self._count == 0:
            return True
        if self._idle is None or self._idle.is_set():
            self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True
