"""The one lifecycle state of a router: not opened, open, closing, closed.

Every part of the router asks this object, so there is a single answer to "may I lend a
session now?". ``closing`` is entered before any engine is closed: nothing new is lent
while engines close. Background work (replica probes) is started by `open` and nowhere
else.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from .errors import RouterClosedError

__all__ = ["Lifecycle", "State"]


class State(enum.Enum):
    """Where a router is in its life."""

    NEW = "not opened"
    """Built; engines connect on first use, background work has not started."""
    OPEN = "open"
    """Background work runs (after ``async with router``, the lifespan, or a first use
    that needs it)."""
    CLOSING = "closing"
    """`dispose` began: nothing new is lent, open sessions may finish."""
    CLOSED = "closed"
    """Every engine is disposed."""


class Lifecycle:
    """The state, and the work to start when the router opens."""

    __slots__ = ("_starters", "state")

    def __init__(self) -> None:
        self.state = State.NEW
        self._starters: list[Callable[[], None]] = []

    @property
    def usable(self) -> bool:
        """Whether sessions may be lent (not closing or closed)."""
        return self.state is State.NEW or self.state is State.OPEN

    def check(self) -> None:
        """`RouterClosedError` unless sessions may be lent."""
        # On the path of every request: one comparison, no further call.
        if self.state is not State.NEW and self.state is not State.OPEN:
            raise RouterClosedError()

    def refuse_once_closed(self, *_: Any) -> None:
        """`RouterClosedError` once closed: the ``do_connect`` hook of a disposed engine,
        which would otherwise open a brand-new connection nothing ever closes."""
        if self.state is State.CLOSED:
            raise RouterClosedError()

    def on_open(self, starter: Callable[[], None]) -> None:
        """Run *starter* when the router opens (at once if it is open already)."""
        self._starters.append(starter)
        if self.state is State.OPEN:
            starter()

    def open(self) -> None:
        """Start the background work (needs a running event loop); again: no effect."""
        self.check()
        if self.state is State.OPEN:
            return
        self.state = State.OPEN
        for starter in self._starters:
            starter()

    def begin_closing(self) -> bool:
        """Enter ``closing``; False when the router is closing or closed already."""
        if not self.usable:
            return False
        self.state = State.CLOSING
        return True

    def closed(self) -> None:
        """Every engine is disposed."""
        self.state = State.CLOSED
