"""A cap on the server connections a process opens, across every engine it has.

Each engine's pool bounds itself, but a process with many tenant engines can still open
more connections than the server accepts. With ``max_connections`` set, every new
server connection first takes a slot here and gives it back when it closes; at the cap a
connection attempt waits (up to the pool timeout of its database) for a slot, asking the
owner of idle connections to let some go, and otherwise fails as unavailable (HTTP 503) —
so the server never has to answer "too many clients". While connections to another
database wait, a connection returned to a pool is closed instead of kept idle, so its slot
goes to the longest waiter.
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from .errors import BudgetExhaustedError
from .events import BudgetExhausted, BudgetWaited, EventBus
from .urls import is_postgresql

__all__ = ["ConnectionBudget"]


class ConnectionBudget:
    """At most *limit* server connections open at once.

    *reclaim* is called when a connection has to wait: it may close idle connections
    elsewhere (by evicting an unused tenant engine) and returns whether it did.
    """

    def __init__(
        self,
        limit: int,
        reclaim: Callable[[], bool] | None = None,
        *,
        events: EventBus | None = None,
    ) -> None:
        self.limit = limit
        self.events = events
        self.reclaim = reclaim
        self._open = 0
        # Counted per engine: a re-pointed tenant has two engines under one name while the
        # old one drains. Keys are numbers handed out here, never reused like id().
        self._held: Counter[int] = Counter()
        self._keys: weakref.WeakKeyDictionary[Engine, int] = weakref.WeakKeyDictionary()
        self._next_key = itertools.count(1)
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._waiting: Counter[int] = Counter()
        """How many of the waiters are for each engine."""

    @property
    def open(self) -> int:
        """Server connections open now, or being opened."""
        return self._open

    @property
    def waiting(self) -> int:
        """New connections waiting for a slot now."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    def held(self, engine: AsyncEngine) -> int:
        """Server connections that *engine* has open now."""
        key = self._keys.get(engine.sync_engine)
        return 0 if key is None else self._held[key]

    async def acquire(self, name: str, timeout: float, key: int) -> None:
        """Take a slot for a new connection to database *name* (of the engine *key*),
        waiting up to *timeout*."""
        if self._open < self.limit and not self._waiters:
            self._open += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._waiting[key] += 1
        if self.reclaim is not None:
            self.reclaim()
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
            if self.events is not None:
                self.events.emit(BudgetWaited(name, loop.time() - started))
        except asyncio.TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # the slot arrived as time ran out: keep it
            waiter.cancel()
            if self.events is not None:
                self.events.emit(BudgetExhausted(name))
            raise BudgetExhaustedError(
                name, f"all {self.limit} connections of max_connections are in use"
            ) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over, but nobody will use it
            else:
                waiter.cancel()
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            self._waiting[key] -= 1
            if self._waiting[key] <= 0:
                del self._waiting[key]

    def release(self) -> None:
        """Give a slot back: to the longest waiter, or to the pool of free slots."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._open -= 1

    def instrument(self, engine: AsyncEngine, *, name: str, timeout: float) -> None:
        """Make every new asyncpg connection of *engine* take a slot and return it on close."""
        if not (is_postgresql(engine.url) and engine.url.get_driver_name() == "asyncpg"):
            return
        key = self._keys.setdefault(engine.sync_engine, next(self._next_key))
        event.listen(engine.sync_engine, "do_connect", self._connect_hook(name, timeout, key))
        event.listen(engine.sync_engine.pool, "reset", self._hand_over_hook(key))

    def _hand_over_hook(self, key: int) -> Callable[..., None]:
        def hand_over(dbapi_connection: Any, record: ConnectionPoolEntry, state: Any) -> None:
            # An idle connection in one pool must not starve a request waiting to connect
            # to another database. (A waiter for this same database gains nothing from a
            # reconnect: closing would only churn.) Run as the pool resets the connection,
            # where a failure or a cancellation still returns the record to the pool.
            if (
                len(self._waiters) > self._waiting[key]
                and state.asyncio_safe
                and not state.terminate_only
            ):
                if not state.transaction_was_reset:
                    dbapi_connection.rollback()  # before it closes, not after
                record.invalidate()

        return hand_over

    def _connect_hook(self, name: str, timeout: float, key: int) -> Callable[..., None]:
        def on_connect(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
            opener = cparams.pop("async_creator_fn", None)
            if opener is None:
                import asyncpg

                opener = asyncpg.connect
            cparams["async_creator_fn"] = self._budgeted(opener, name, timeout, key)

        return on_connect

    def _budgeted(
        self, opener: Callable[..., Any], name: str, timeout: float, key: int
    ) -> Callable[..., Any]:
        async def connect(*args: Any, **kwargs: Any) -> Any:
            await self.acquire(name, timeout, key)
            try:
                connection = await opener(*args, **kwargs)
            except BaseException:
                self.release()
                raise
            self._held[key] += 1
            slot = _Slot(self, key)
            # Closed, terminated or lost: asyncpg tells its listeners; a connection only
            # ever dropped by the garbage collector is caught by the finalizer.
            connection.add_termination_listener(slot.give_back)
            weakref.finalize(connection, slot.give_back)
            return connection

        return connect


class _Slot:
    """One connection's slot, given back exactly once."""

    __slots__ = ("_budget", "_key")

    def __init__(self, budget: ConnectionBudget, key: int) -> None:
        self._budget: ConnectionBudget | None = budget
        self._key = key

    def give_back(self, *_: object) -> None:
        budget, self._budget = self._budget, None
        if budget is not None:
            held = budget._held
            held[self._key] -= 1
            if held[self._key] <= 0:
                del held[self._key]
            budget.release()
