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
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection
from sqlalchemy.util import await_only

from .lsn import format_lsn, parse_lsn

__all__ = [
    "TOKEN_COOKIE",
    "TOKEN_HEADER",
    "Mark",
    "RequestConsistency",
    "before_page_header",
    "current_consistency",
    "format_token",
    "merge",
    "parse_token",
    "position_after_commit",
    "reset_consistency",
    "set_consistency",
]

TOKEN_HEADER = "X-Consistency-Token"
"""The response header carrying the token, and the request header that sends it back."""
TOKEN_COOKIE = "dbrouter_consistency"
"""The cookie carrying the same token, for browsers."""

_ENTRY = re.compile(
    r"([A-Za-z0-9_][A-Za-z0-9_-]{0,62}):(@\d{1,12}(?:\.\d{1,6})?|[0-9A-F]{1,8}/[0-9A-F]{1,8})"
)
_MAX_ENTRIES = 16
_MAX_LENGTH = 1024
_SEPARATORS = re.compile(r"[,|]")

_COMMIT_POSITION = (
    "SELECT pg_current_wal_insert_lsn()::text, current_setting('wal_block_size')::int, "
    "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')"
)
# A record that ends on a WAL page boundary leaves the insert position past the next
# page's header, which a replica does not "replay" until another record follows.
_SHORT_PAGE_HEADER = 24
_LONG_PAGE_HEADER = 40

Mark = int | float
"""A position: an LSN (int) or, for databases without WAL positions, a write time (float)."""


@dataclass(slots=True)
class RequestConsistency:
    """What one request needs to see, and which primaries it wrote to."""

    required: dict[str, Mark] = field(default_factory=dict)
    """Per primary name: the position a replica must have replayed to serve this request."""
    written: dict[str, Mark] = field(default_factory=dict)
    """Per primary name: the position reached by the commits this request made there."""

    def note_write(self, name: str, mark: Mark) -> None:
        """Remember that a commit on primary *name* reached *mark*."""
        previous = self.written.get(name)
        if previous is None or type(previous) is not type(mark) or mark > previous:
            self.written[name] = mark


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
    entries = [entry.strip() for entry in _SEPARATORS.split(text)]
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
    """The token naming *marks*, separated by ``|`` (valid in a cookie, unlike ``,``)."""
    return "|".join(
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


def position_after_commit(connection: Connection) -> Mark:
    """Where a token must point after a commit just made on *connection*.

    On PostgreSQL: the WAL insert position, read on the committing connection itself while
    the session still holds it, so it is at or past the commit record and needs no other
    connection from the pool. Elsewhere: the time of the commit. Call it from synchronous
    session events only (it runs the query through SQLAlchemy's greenlet bridge).
    """
    if connection.dialect.name != "postgresql":
        return time.time()
    if connection.dialect.driver == "asyncpg":
        # Outside any transaction: one statement, one round trip, no BEGIN or ROLLBACK.
        driver = connection.connection.driver_connection
        row = await_only(driver.fetchrow(_COMMIT_POSITION))  # type: ignore[union-attr]
    else:
        row = connection.exec_driver_sql(_COMMIT_POSITION).one()
    return before_page_header(parse_lsn(row[0]), int(row[1]), int(row[2]))


def before_page_header(lsn: int, block_size: int, segment_size: int) -> int:
    """*lsn* moved back over a page header it points just past, if it does."""
    if lsn % segment_size == _LONG_PAGE_HEADER:
        return lsn - _LONG_PAGE_HEADER
    if lsn % block_size == _SHORT_PAGE_HEADER:
        return lsn - _SHORT_PAGE_HEADER
    return lsn
