"""Who may migrate a target now: a PostgreSQL advisory lock per target across processes,
and one Alembic run at a time inside a process.

The advisory lock is the transaction-scoped kind (``pg_advisory_xact_lock``), taken on
the connection that migrates the target, in the transaction the migration runs in. It
ends with that transaction however it ends, so a pooled connection never keeps it, a
crashed deploy never leaves it behind, and it works through PgBouncer in transaction mode.

Alembic keeps the migration running now in module globals (``alembic.op`` and
``alembic.context`` are bound to it), so two migrations interleaved on one event loop
would send each other's operations to the wrong connection. Inside a process, the
revisions of one target run at a time (`alembic_turn`); connecting, waiting for locks,
reading versions and committing go on concurrently around it.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["TargetLocked", "alembic_turn", "lock_key", "take_lock"]

_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")
_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
# A bigint advisory key shows in pg_locks as two 32-bit halves, objsubid 1.
_HOLDER = text(
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid = CAST(CAST(:high AS bigint) AS oid) "
    "AND objid = CAST(CAST(:low AS bigint) AS oid) AND objsubid = 1 LIMIT 1"
)
_HALF = 0xFFFFFFFF

# Module-wide because Alembic's own state is: one turn per process, one lock per loop.
_process_turn = threading.Lock()
_loop_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


class TargetLocked(Exception):
    """Another migration holds the target's lock, and the command was told not to wait."""


def lock_key(target: str) -> int:
    """The advisory lock key of *target*: a stable 64-bit hash of its name."""
    digest = hashlib.blake2b(f"dbrouter.migrate:{target}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def take_lock(
    connection: AsyncConnection,
    target: str,
    *,
    wait: bool,
    waiting: Callable[[int | None], None],
) -> None:
    """Take *target*'s lock in *connection*'s transaction. When another migration holds
    it, tell *waiting* which server process does, then wait for it (or, without *wait*,
    raise `TargetLocked`)."""
    key = lock_key(target)
    if await connection.scalar(_TRY_LOCK, {"key": key}):
        return
    holder = await connection.scalar(_HOLDER, {"high": (key >> 32) & _HALF, "low": key & _HALF})
    waiting(holder)
    if not wait:
        by = "" if holder is None else f" (PostgreSQL server process {holder})"
        raise TargetLocked(f"another migration of {target} holds its lock{by}; not waiting")
    await connection.execute(_LOCK, {"key": key})


@asynccontextmanager
async def alembic_turn() -> AsyncIterator[None]:
    """Wait until no other migration of this process is running Alembic, then run."""
    loop = asyncio.get_running_loop()
    turn = _loop_turns.setdefault(loop, asyncio.Lock())
    async with turn:
        if not _process_turn.acquire(blocking=False):
            # Another thread's event loop is migrating (rare: scripts, tests).
            await _acquire_in_thread()
        try:
            yield
        finally:
            _process_turn.release()


async def _acquire_in_thread() -> None:
    acquiring = asyncio.ensure_future(asyncio.to_thread(_process_turn.acquire))
    try:
        await asyncio.shield(acquiring)
    except BaseException:
        # Cancelled while waiting: the thread still gets the lock; give it back then.
        acquiring.add_done_callback(_release_acquired)
        raise


def _release_acquired(acquiring: asyncio.Future[bool]) -> None:
    if not acquiring.cancelled() and acquiring.exception() is None and acquiring.result():
        _process_turn.release()
