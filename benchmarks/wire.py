"""Round trips to PostgreSQL, counted on the wire by a proxy in front of the server.

Every round trip of the PostgreSQL protocol ends with a message the server must answer
before the client goes on: ``Query`` (simple protocol) or ``Sync`` (extended protocol,
after Parse/Bind/Execute). The proxy forwards both directions unchanged and counts those
two messages coming from clients, which includes what ``pg_stat_statements`` cannot see,
such as the empty statement of asyncpg's pre-ping.

A client's ``SSLRequest`` is answered "no" by the proxy itself, so the stream stays
readable; the server behind it must accept connections without TLS.
"""

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator

__all__ = ["FrontendCounter", "counting_proxy"]

# Codes of the untyped messages a client may send before its startup message.
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
ROUND_TRIP_ENDS = frozenset(b"QS")


class FrontendCounter:
    """Reads the messages a client sends and counts the ones that end a round trip."""

    def __init__(self) -> None:
        self.round_trips = 0
        self.started = False
        """Whether the startup message went by: from then on every message is typed."""
        self._buffer = bytearray()

    def feed(self, data: bytes) -> bytes | None:
        """Takes bytes from the client; returns what to answer it directly, if anything
        (``b"N"`` to an SSL or GSS encryption request, which is then not forwarded)."""
        self._buffer += data
        answer = None
        while True:
            if not self.started:
                if len(self._buffer) < 8:
                    break
                length, code = struct.unpack("!ii", self._buffer[:8])
                if len(self._buffer) < length:
                    break
                if code in (SSL_REQUEST, GSSENC_REQUEST):
                    answer = b"N"
                else:
                    self.started = True
                del self._buffer[:length]
            else:
                if len(self._buffer) < 5:
                    break
                kind = self._buffer[0]
                (length,) = struct.unpack("!i", self._buffer[1:5])
                if len(self._buffer) < 1 + length:
                    break
                if kind in ROUND_TRIP_ENDS:
                    self.round_trips += 1
                del self._buffer[: 1 + length]
        return answer


class _Proxy:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.counters: list[FrontendCounter] = []
        self.cut: bytes | None = None
        """While set: a client message holding these bytes is not forwarded, its connection
        is cut instead (for tests of a connection lost mid-statement)."""

    @property
    def round_trips(self) -> int:
        return sum(counter.round_trips for counter in self.counters)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counter = FrontendCounter()
        self.counters.append(counter)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            # An encryption request is answered here, so the server sees the startup message
            # first; nothing is forwarded before it.
            pending = b""
            while not counter.started:
                data = await reader.read(65536)
                if not data:
                    return
                pending += data
                answer = counter.feed(data)
                if answer:
                    pending = b""
                    writer.write(answer)
                    await writer.drain()
            upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.port)
            upstream_writer.write(pending)
            await asyncio.gather(
                _pump(reader, upstream_writer, counter, self),
                _pump(upstream_reader, writer, None, None),
            )
        finally:
            for end in (writer, upstream_writer):
                if end is not None:
                    end.close()


async def _pump(
    source: asyncio.StreamReader,
    sink: asyncio.StreamWriter,
    counter: FrontendCounter | None,
    proxy: _Proxy | None,
) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await source.read(65536):
            if proxy is not None and proxy.cut is not None and proxy.cut in data:
                break
            if counter is not None:
                counter.feed(data)
            sink.write(data)
            await sink.drain()
    with contextlib.suppress(ConnectionError, OSError):
        sink.close()


@contextlib.asynccontextmanager
async def counting_proxy(host: str, port: int) -> AsyncIterator[tuple[int, _Proxy]]:
    """A proxy on a free loopback port in front of *host*:*port*: (its port, the proxy,
    whose ``round_trips`` counts every connection's round trips so far)."""
    proxy = _Proxy(host, port)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], proxy
    finally:
        server.close()
