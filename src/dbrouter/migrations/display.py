"""What ``dbrouter migrate`` shows: a progress bar on a terminal, lines for targets that
wait or fail, and a table of every target at the end (rich)."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from .report import MigrationReport, TargetResult

__all__ = ["ConsoleProgress", "print_table"]

_STYLES = {"ok": "green", "unchanged": "dim", "failed": "bold red"}


class ConsoleProgress:
    """Progress on *console* (standard error): a bar when it is a terminal, and a line for
    each target that waits for another migration or fails."""

    def __init__(self, console: Console, command: str) -> None:
        self._console = console
        self._command = command
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ConsoleProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def started(self, targets: Sequence[str]) -> None:
        """Start the bar, on a terminal."""
        if not self._console.is_terminal or not targets:
            return
        self._bar = Progress(
            TextColumn(f"{self._command} [bold]{{task.description}}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self._console,
            transient=True,
        )
        self._task = self._bar.add_task("", total=len(targets))
        self._bar.start()

    def waiting(self, target: str, holder: int | None) -> None:
        """Say which target waits, and for which server process."""
        by = "" if holder is None else f" (PostgreSQL server process {holder})"
        self._say(f"{target}: another migration of it is running{by}")

    def finished(self, result: TargetResult) -> None:
        """Advance the bar; say so when the target failed."""
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=1, description=result.target)
        if result.status == "failed":
            self._say(f"{result.target}: failed: {result.error}")

    def _say(self, line: str) -> None:
        # As it is: names and errors hold no markup, and one line stays one line.
        self._console.print(line, markup=False, highlight=False, soft_wrap=True)


def print_table(report: MigrationReport, console: Console) -> None:
    """The table of every target of *report*, then a line of totals."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("target", no_wrap=True)
    table.add_column("before")
    table.add_column("after")
    table.add_column("status")
    if report.command == "status":
        table.add_column("behind")
    table.add_column("seconds", justify="right")
    table.add_column("error")
    for result in report.targets:
        # Text, not markup: an error may hold brackets.
        cells = [
            Text(result.target),
            Text(_revisions(result.before)),
            Text(_revisions(result.after)),
            Text(result.status, style=_STYLES[result.status]),
        ]
        if report.command == "status":
            cells.append(Text("yes", style="bold yellow") if result.behind else Text("no"))
        cells += [Text(f"{result.seconds:.2f}"), Text(result.error or "")]
        table.add_row(*cells)
    console.print(table)
    console.print(_totals(report), markup=False, highlight=False)


def _revisions(revisions: tuple[str, ...]) -> str:
    return ", ".join(revisions) or "(none)"


def _totals(report: MigrationReport) -> str:
    counts = {
        outcome: sum(result.status == outcome for result in report.targets)
        for outcome in ("ok", "unchanged", "failed")
    }
    line = f"{len(report.targets)} target(s): " + ", ".join(
        f"{count} {outcome}" for outcome, count in counts.items()
    )
    if report.command == "status":
        line += f"; {report.behind} behind head"
    return line
