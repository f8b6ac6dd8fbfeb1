"""uvicorn's httptools protocol, with a deadline on reading a request's head.

uvicorn arms its keep-alive timer only after a response, and cancels it on the first byte: a
client that connects and sends nothing, or half a request line, or headers it never finishes,
holds its connection (and a file descriptor) forever. Enough of them, and a container's
descriptor limit stops the server from accepting anyone. Here a connection must complete each
request head within the keep-alive timeout (SESSIONS_KEEPALIVE_S) of it starting, or is closed.
Bodies are not timed: this API has no request bodies to wait for.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadDeadlineHttpProtocol(HttpToolsProtocol):
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_deadline()  # the next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        self._cancel_head_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.timeout_keep_alive, self._head_too_slow)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()
