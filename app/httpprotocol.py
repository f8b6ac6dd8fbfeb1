"""uvicorn's httptools protocol, with a deadline on reading a request's head.

uvicorn arms its keep-alive timer only after a response, and cancels it on the first byte: a
client that connects and sends nothing, or half a request line, or headers it never finishes,
holds its connection (and a file descriptor) forever. Enough of them, and a container's
descriptor limit stops the server from accepting anyone. Here a connection must complete each
request head within the keep-alive timeout (SESSIONS_KEEPALIVE_S) of it starting, or is closed.
Bodies are not timed: this API has no request bodies to wait for.

A connection only notes when its pending head began; the server sweeps its connections once a
second (`close_late_heads`). A timer per request would cost a cache hit a few percent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadDeadlineHttpProtocol(HttpToolsProtocol):
    # loop.time() when the request head being read began; None between requests.
    head_started: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_started = self.loop.time()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.head_started is None:  # the next request on a kept-alive connection
            self.head_started = self.loop.time()

    def on_headers_complete(self) -> None:
        self.head_started = None
        super().on_headers_complete()


def close_late_heads(connections: Iterable[object], now: float, timeout_s: float) -> int:
    """Close the connections whose pending request head began more than `timeout_s` ago; how
    many were closed."""
    closed = 0
    for connection in list(connections):
        if not isinstance(connection, HeadDeadlineHttpProtocol):
            continue
        started = connection.head_started
        if started is not None and now - started > timeout_s and not connection.transport.is_closing():
            connection.head_started = None
            connection.transport.close()
            closed += 1
    return closed
