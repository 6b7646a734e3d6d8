"""The consistency middleware: reads the client's token, answers writes with a fresh one."""

from __future__ import annotations

import functools

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..replicas.consistency import (
    TOKEN_COOKIE,
    TOKEN_HEADER,
    Mark,
    RequestConsistency,
    format_token,
    merge,
    parse_token,
    reset_consistency,
    set_consistency,
)

__all__ = ["ConsistencyMiddleware"]


class ConsistencyMiddleware:
    """Reads the client's consistency token and answers writes with a fresh one.

    The token has to be in the response headers, and FastAPI has built the response by
    the time a dependency's exit code runs; so it is added here, as the response starts.
    The positions were read when the commits happened, so adding it costs no I/O.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestConsistency(required=_sent_marks(scope))
        token = set_consistency(record)

        async def send_with_token(message: Message) -> None:
            if message["type"] == "http.response.start" and record.written:
                _add_token(message, record)
            await send(message)

        try:
            await self.app(scope, receive, send_with_token)
        finally:
            reset_consistency(token)


def _add_token(message: Message, record: RequestConsistency) -> None:
    value = format_token(merge(record.required, record.written))
    headers = MutableHeaders(scope=message)
    headers.append(TOKEN_HEADER, value)
    headers.append(
        "set-cookie", f"{TOKEN_COOKIE}={value}; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"
    )


_TOKEN_HEADER_KEY = TOKEN_HEADER.lower().encode("latin-1")
_NO_MARKS: dict[str, Mark] = {}


def _sent_marks(scope: Scope) -> dict[str, Mark]:
    """The positions of the token the request sent (header first, then cookie); shared
    between requests, so never to be changed."""
    cookies = None
    for key, value in scope["headers"]:
        if key == _TOKEN_HEADER_KEY:
            return _parsed(value.decode("latin-1"))
        if key == b"cookie":
            cookies = value.decode("latin-1")
    if not cookies or TOKEN_COOKIE not in cookies:
        return _NO_MARKS
    for part in cookies.split(";"):
        name, _, value = part.strip().partition("=")
        if name == TOKEN_COOKIE:
            return _parsed(value)
    return _NO_MARKS


@functools.lru_cache(maxsize=1024)
def _parsed(raw: str) -> dict[str, Mark]:
    # A client sends the same token again and again: parse it once.
    try:
        return parse_token(raw)
    except ValueError:
        return _NO_MARKS  # a malformed token only costs the client its read-your-writes
