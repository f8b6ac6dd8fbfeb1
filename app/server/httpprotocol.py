"""uvicorn's httptools protocol, with a deadline and a size bound on reading a request.

uvicorn arms its keep-alive timer only after a response, and cancels it on every byte received:
a client that connects and sends nothing, or half a request line, or headers it never finishes,
or a body one byte at a time, holds its connection (and a file descriptor) forever. Enough of
them, and a container's descriptor limit stops the server from accepting anyone. Here a request
must arrive whole within the keep-alive timeout (SESSIONS_KEEPALIVE_S) of its first byte (of the
connection, for a first request), or the connection is closed.

httptools, unlike h11, puts no bound on a request head either: one client sending a header of
hundreds of megabytes would have it buffered whole. A head over MAX_HEAD_BYTES is answered 431
and the connection closed.

While the service drains (after SIGTERM), every response closes its connection.

A connection only notes when its pending request began; the server sweeps its connections once
a second (`close_stalled_requests`): a timer per request would cost a cache hit a few percent.
The same sweep lets go of a client that stops reading. For a stream (a watch) that takes
counting real progress: its heartbeats keep adding to the unsent bytes, which would look like
movement, and the kernel's send buffer (megabytes, on loopback) would hide the stall for hours
of heartbeats. So progress is what the client has acknowledged: the bytes written, less those
still in the transport's buffer, less those still in the socket's send queue (SIOCOUTQ).
"""

from __future__ import annotations

import asyncio
import fcntl
import struct
import termios
from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.api.problems import PROBLEM_JSON, error_body
from app.api.routes import may_stream
from app.changes.streams import STREAM_WRITE
from app.errors import HeadTooLarge
from app.lifecycle import DRAINING

MAX_HEAD_BYTES = 64 * 1024

_TOO_LARGE_BODY = error_body(HeadTooLarge(f"a request line and headers are limited to {MAX_HEAD_BYTES} bytes"))
# Written straight to the transport: the request never reaches the app to be answered there.
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: %s\r\n"
    b"content-length: %d\r\n"
    b"connection: close\r\n\r\n%s" % (PROBLEM_JSON.encode(), len(_TOO_LARGE_BODY), _TOO_LARGE_BODY)
)


class CountingTransport:
    """A transport that counts the bytes written through it; everything else is the real one's."""

    __slots__ = ("_transport", "written", "pending")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.written = 0
        self.pending = True  # bytes may be unacknowledged: the stalled-reader sweep looks

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.pending = True
        self._transport.write(data)

    def is_closing(self) -> bool:  # asked before every event's write: not through __getattr__
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BoundedHttpProtocol(HttpToolsProtocol):
    # loop.time() when the request being read began; None once it has been read whole.
    request_started: float | None = None
    # Bytes received since the current request head began; -1 once the head is complete, -2
    # once it has been refused (what still arrives is dropped).
    _head_bytes = 0
    # (progress mark, when it was first seen) while a response waits on the client
    write_stalled: tuple[int, float] | None = None
    # Set while a stream's response is in progress: counts what the response wrote; its cycle.
    counting: CountingTransport | None = None
    _stream_cycle: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.request_started = self.loop.time()

    def data_received(self, data: bytes) -> None:
        head_bytes = self._head_bytes
        if head_bytes == -2:
            return
        if head_bytes == -1:  # a body: not bounded here
            super().data_received(data)
            return
        if self.request_started is None:  # the next request on a kept-alive connection
            self.request_started = self.loop.time()
        room = MAX_HEAD_BYTES - head_bytes
        if len(data) <= room:
            self._head_bytes = head_bytes + len(data)
            super().data_received(data)
            return
        # This read would take the head past the bound: parse up to the bound, and look at
        # what the head did there. Only then are a body, or requests pipelined behind the
        # head, told from a head that is too large.
        self._head_bytes = MAX_HEAD_BYTES
        super().data_received(data[:room])
        if self.transport.is_closing():
            return
        if self._head_bytes == MAX_HEAD_BYTES:  # still the same head, and no end to it
            self._refuse_head()
        else:  # -1: in its body; 0: the message ended and the next one begins
            self.data_received(data[room:])

    def on_headers_complete(self) -> None:
        self._head_bytes = -1
        super().on_headers_complete()
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.scope is self.scope
            and may_stream(self.scope["path"], self.scope["query_string"])
        ):
            # Perhaps a stream: count its writes, for the stalled-reader check, and let it write
            # its events straight to the transport.
            self.counting = counting = CountingTransport(self.transport)
            self._stream_cycle = cycle
            cycle.transport = counting  # type: ignore[assignment]
            flow = self.flow
            transport = self.transport

            def write_chunk(data: bytes) -> bool:
                # Once per event per stream: CountingTransport.write, inlined.
                if (
                    cycle.response_complete
                    or cycle.disconnected
                    or not cycle.chunked_encoding
                    or flow.write_paused
                    or transport.is_closing()
                ):
                    return False
                chunk = b"%x\r\n%b\r\n" % (len(data), data)
                try:
                    transport.write(chunk)
                except RuntimeError:  # closed under us: the stream's own send finds out
                    return False
                counting.written += len(chunk)
                counting.pending = True
                return True

            self.scope.setdefault("extensions", {})[STREAM_WRITE] = write_chunk  # type: ignore[assignment]
        if DRAINING.is_set() and self.cycle is not None and self.cycle.scope is self.scope:
            # During the shutdown delay, answer and close: keep-alive clients reconnect, and
            # reach a replica that is not going away, instead of meeting the close at the end.
            self.cycle.keep_alive = False

    def on_response_complete(self) -> None:
        stream = self._stream_cycle
        if stream is not None and stream.response_complete:
            self.counting = self._stream_cycle = None  # what follows on the connection is no stream
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # uvicorn tells only the newest request's cycle: a request pipelined behind a stream
        # would leave the stream waiting for a client that has gone, for its whole lifetime.
        stream = self._stream_cycle
        if stream is not None and stream is not self.cycle and not stream.response_complete:
            stream.disconnected = True
            stream.message_event.set()

    def on_message_complete(self) -> None:
        self.request_started = None
        self._head_bytes = 0  # what comes next is the next request's head
        super().on_message_complete()

    def _refuse_head(self) -> None:
        self._head_bytes = -2
        self.request_started = None
        if not self.transport.is_closing():
            self.transport.write(_TOO_LARGE)
            self.transport.close()


def close_stalled_requests(connections: Iterable[object], now: float, timeout_s: float) -> int:
    """Close the connections whose pending request began more than `timeout_s` ago and has not
    arrived whole, and abort those whose unsent response has not moved for as long (a client
    that stopped reading); how many were closed."""
    closed = 0
    for connection in list(connections):
        if not isinstance(connection, BoundedHttpProtocol):
            continue
        transport = connection.transport
        started = connection.request_started
        if started is not None and now - started > timeout_s and not transport.is_closing():
            connection.request_started = None
            transport.close()
            closed += 1
            continue
        counting = connection.counting
        if counting is not None and not counting.pending:
            continue  # an idle stream whose every byte was acknowledged at the last sweep
        unsent = transport.get_write_buffer_size()
        if counting is not None:  # a stream: the bytes the client has acknowledged
            unsent += _kernel_unacknowledged(transport)
            counting.pending = unsent > 0
            mark = counting.written - unsent
        else:  # a response: any change of what is unsent
            mark = unsent
        if not unsent:
            connection.write_stalled = None
        elif connection.write_stalled is None or connection.write_stalled[0] != mark:
            connection.write_stalled = (mark, now)
        elif now - connection.write_stalled[1] > timeout_s:
            transport.abort()  # close() would wait for the buffer to drain: for ever
            closed += 1
    return closed


def _kernel_unacknowledged(transport: asyncio.Transport) -> int:
    """Bytes in the socket's send queue the peer has not acknowledged (Linux SIOCOUTQ, which
    is TIOCOUTQ); 0 where that cannot be read."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        queued: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0
    return queued
