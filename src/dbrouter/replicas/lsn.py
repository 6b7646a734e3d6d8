"""Positions in PostgreSQL's write-ahead log (LSNs): plain ints, and PostgreSQL's ``X/Y``
text form."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["format_lsn", "parse_lsn"]

_MAX_LSN: Final = (1 << 64) - 1
# Each half of an LSN is a 32-bit number: at most 8 hex digits. Explicit ASCII ranges, so
# no other Unicode digit, sign, space, underscore or "0x" prefix gets through.
_LSN_PATTERN: Final = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
_LSN_MAX_CHARS: Final = 17


def parse_lsn(value: str) -> int:
    """The LSN written as *value* in PostgreSQL's ``X/Y`` form, as an int.

    ``X`` and ``Y`` are the high and low 32 bits, each 1 to 8 hex digits. Anything else
    (signs, spaces, ``0x``, underscores, non-ASCII digits, surrounding whitespace) is a
    `ValueError`: the value may come from an HTTP client.
    """
    if not isinstance(value, str):
        raise TypeError(f"an LSN must be a str, not {type(value).__name__}")
    match = _LSN_PATTERN.fullmatch(value) if len(value) <= _LSN_MAX_CHARS else None
    if match is None:
        raise ValueError(
            "an LSN must be two groups of 1 to 8 hex digits separated by '/', "
            "such as '16/B374D848'"
        )
    high, low = match.groups()
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    """*lsn* in PostgreSQL's ``X/Y`` form, as ``pg_lsn`` prints it (``16/B374D848``)."""
    if isinstance(lsn, bool) or not isinstance(lsn, int):
        raise TypeError(f"an LSN must be an int, not {type(lsn).__name__}")
    if not 0 <= lsn <= _MAX_LSN:
        raise ValueError(f"an LSN must be between 0 and 2**64 - 1, not {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
