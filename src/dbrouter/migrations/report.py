"""What a migration command did to each target, as data and as the JSON of ``--json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Command", "MigrationReport", "Outcome", "TargetResult"]

Command = Literal["upgrade", "downgrade", "current", "status"]
"""The commands run over targets."""

Outcome = Literal["ok", "unchanged", "failed"]
"""``ok``: the target moved to another revision; ``unchanged``: it stayed where it was (and
``current`` and ``status`` never move one); ``failed``: the command failed on it, and what
it had begun was rolled back."""


@dataclass(frozen=True, slots=True)
class TargetResult:
    """What a command did to one target."""

    target: str
    """``database:<name>`` or ``tenant:<id>``."""
    before: tuple[str, ...]
    """The revisions the target was at when the command began (empty: none yet)."""
    after: tuple[str, ...]
    """The revisions it is at now; ``before`` when it failed."""
    status: Outcome
    error: str | None = None
    """Why it failed, in words without a URL or a password; None unless ``failed``."""
    seconds: float = 0.0
    """How long the command took on this target, waiting for its lock included."""
    behind: bool | None = None
    """``status`` only: whether the target is not at the head revisions of its script
    directory (a failed target counts as behind)."""

    def as_dict(self) -> dict[str, Any]:
        """The target's entry in the JSON document of ``--json``."""
        entry: dict[str, Any] = {
            "target": self.target,
            "before": list(self.before),
            "after": list(self.after),
            "status": self.status,
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }
        if self.behind is not None:
            entry["behind"] = self.behind
        return entry


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What one command did to every target it ran on, in the order they were selected:
    named databases first, in configuration order, then tenants, sorted."""

    command: Command
    targets: list[TargetResult] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """How many targets failed."""
        return sum(result.status == "failed" for result in self.targets)

    @property
    def behind(self) -> int:
        """``status``: how many targets are not at head (failed ones included)."""
        return sum(bool(result.behind) for result in self.targets)

    @property
    def ok(self) -> bool:
        """Whether no target failed and, for ``status``, every target is at head."""
        return self.failed == 0 and self.behind == 0

    @property
    def exit_status(self) -> int:
        """The exit status of ``dbrouter migrate``: 0 when `ok`, else 1."""
        return 0 if self.ok else 1

    def __getitem__(self, target: str) -> TargetResult:
        """The result of *target* (``tenant:acme``); `KeyError` when it did not run."""
        for result in self.targets:
            if result.target == target:
                return result
        raise KeyError(target)

    def as_dict(self) -> dict[str, Any]:
        """The JSON document ``dbrouter migrate ... --json`` prints."""
        return {
            "command": self.command,
            "targets": [result.as_dict() for result in self.targets],
            "failed": self.failed,
        }
