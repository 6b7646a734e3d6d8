"""Read-your-writes: consistency tokens and the per-request record of writes and needs.

After a request commits on a primary, its response carries a token naming the primary's
WAL position at that moment (``primary:16/B374D848``). A later request that sends the
token back reads only from a replica that has replayed at least that position; otherwise
from the primary. For a database without WAL positions (SQLite) the token carries the
time of the write (``primary:@1764050000.25``) and the client reads from the primary for
``consistency_window`` seconds after it.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import dataclass, field

from .replicas import format_lsn, parse_lsn

TOKEN_HEADER = "X-Consistency-Token"
"""The response header carrying the token, and the request header that sends it back."""
TOKEN_COOKIE = "dbrouter_consistency"
"""The cookie carrying the same token, for browsers."""

_ENTRY = re.compile(
    r"([A-Za-z0-9_][A-Za-z0-9_-]{0,62}):(@\d{1,12}(?:\.\d{1,6})?|[0-9A-F]{1,8}/[0-9A-F]{1,8})"
)
_MAX_ENTRIES = 16
_MAX_LENGTH = 1024

Mark = int | float
"""A position: an LSN (int) or, for databases without WAL positions, a write time (float)."""


@dataclass(slots=True)
class RequestConsistency:
    """What one request needs to see, and which primaries it wrote to."""

    required: dict[str, Mark] = field(default_factory=dict)
    """Per primary name: the position a replica must have replayed to serve this request."""
    written: set[str] = field(default_factory=set)
    """Names of the primaries this request committed on."""


_current: ContextVar[RequestConsistency | None] = ContextVar("dbrouter_consistency", default=None)


def current_consistency() -> RequestConsistency | None:
    """The record of the request being served, if a consistency-aware request is running."""
    return _current.get()


def set_consistency(record: RequestConsistency | None) -> object:
    """Make *record* current; returns the token to give `reset_consistency`."""
    return _current.set(record)


def reset_consistency(token: object) -> None:
    """Undo `set_consistency`."""
    _current.reset(token)  # type: ignore[arg-type]


def parse_token(text: str) -> dict[str, Mark]:
    """The positions named by a token; `ValueError` when it is malformed in any way."""
    if len(text) > _MAX_LENGTH:
        raise ValueError("consistency token too long")
    marks: dict[str, Mark] = {}
    entries = [entry.strip() for entry in text.split(",")]
    if len(entries) > _MAX_ENTRIES:
        raise ValueError("consistency token names too many databases")
    for entry in entries:
        match = _ENTRY.fullmatch(entry)
        if match is None:
            raise ValueError("malformed consistency token")
        name, position = match.groups()
        marks[name] = float(position[1:]) if position.startswith("@") else parse_lsn(position)
    return marks


def format_token(marks: dict[str, Mark]) -> str:
    """The token naming *marks*."""
    return ",".join(
        f"{name}:@{mark:.3f}" if isinstance(mark, float) else f"{name}:{format_lsn(mark)}"
        for name, mark in sorted(marks.items())
    )


def merge(older: dict[str, Mark], newer: dict[str, Mark]) -> dict[str, Mark]:
    """The positions of both, the later one where both name a database."""
    merged = dict(older)
    for name, mark in newer.items():
        previous = merged.get(name)
        if previous is None or type(previous) is not type(mark) or mark > previous:
            merged[name] = mark
    return merged
