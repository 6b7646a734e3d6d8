"""Following a migration command as it runs: targets started, waiting, finished."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .report import TargetResult

__all__ = ["MigrationProgress", "SilentProgress"]


class MigrationProgress(Protocol):
    """Told what a command is doing; the command line draws a progress bar from it.

    Called on the event loop running the command: a method must be quick and do no I/O.
    """

    def started(self, targets: Sequence[str]) -> None:
        """The command begins, on *targets* (``database:<name>``, ``tenant:<id>``)."""
        ...

    def waiting(self, target: str, holder: int | None) -> None:
        """Another migration of *target* holds its lock: PostgreSQL's server process
        *holder* (None when it ended meanwhile); the command waits, unless told not to."""
        ...

    def finished(self, result: TargetResult) -> None:
        """The command is done with one target."""
        ...


class SilentProgress:
    """Progress nobody follows."""

    def started(self, targets: Sequence[str]) -> None:
        """Nothing to show."""

    def waiting(self, target: str, holder: int | None) -> None:
        """Nothing to show."""

    def finished(self, result: TargetResult) -> None:
        """Nothing to show."""
