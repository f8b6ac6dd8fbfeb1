"""One open watch: a small buffer of encoded events, written out by the request's own task.

The change hub pushes encoded events into a stream without waiting (a non-blocking send, as in
the Kubernetes watch cache); the stream's ASGI task, idle on a future between events, wakes and
writes what is pending in one `send`. Nothing else exists per idle stream: no thread, no timer,
no queue beyond this buffer, whose size is bounded:
- a collection stream whose unsent events pass `COLLECTION_BUFFER_BYTES` is sent an ERROR (a
  410 problem) instead, and ends: the client lists again;
- a job stream keeps only the latest version pending: a client that cannot keep up is sent the
  newest version next, never a backlog of old ones.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable

from starlette.types import Receive, Send

from app.changes import events
from app.changes.events import Format
from app.store.sessionfile import Document

COLLECTION_BUFFER_BYTES = 1024 * 1024


# An ASGI extension the server's protocol offers to streams (scope["extensions"]): a callable
# that writes one chunk of the response body at once, without a trip through the request's task
# and the middleware's `send` wrappers, and returns False when it cannot (the client is not
# keeping up, or the response is not a chunked one in progress): the stream then sends as usual.
STREAM_WRITE = "sessions.stream_write"


class Kind(enum.Enum):
    COLLECTION = "collection"
    JOB = "job"


class End(enum.Enum):
    """Why a stream ended (the `reason` label of sessions_streams_ended_total)."""

    CLIENT = "client"  # the client went away
    TIMEOUT = "timeout"  # its lifetime (SESSIONS_STREAM_TIMEOUT_S to twice that) is over
    SLOW = "slow"  # it fell behind by more than its buffer
    DRAIN = "drain"  # the service is shutting down


class Stream:
    __slots__ = (
        "kind",
        "format",
        "_chunks",
        "_bytes",
        "_waiter",
        "ended",
        "last_push",
        "_touch",
        "write_now",
        "position",
        "_final",
        "__weakref__",
    )

    def __init__(self, kind: Kind, format: Format, touch: Callable[[Stream], None]) -> None:
        self.kind = kind
        self.format = format
        self._chunks: list[bytes] = []
        self._bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self.ended: End | None = None
        self.last_push = 0.0  # loop time of the last event pushed: when a bookmark is due
        self._touch = touch  # tells the hub this stream just had an event (bookmarks)
        # The server's direct write (STREAM_WRITE), once the stream is live:
        # an event for an idle stream whose client keeps up is written at once, with no wake-up
        # of its task. Anything else goes through the buffer and the task's `send`.
        self.write_now: Callable[[bytes], bool] | None = None
        # Until it is live: the revision up to which this stream has sent every change (None
        # while its initial state is unfinished). Its last bookmark may only name that.
        self.position: int | None = None
        self._final: Callable[[], bytes | None] | None = None

    def push(self, data: bytes, now: float) -> bool:
        """Queue an event; False when the stream has ended, or when a collection stream's
        unsent events now pass its buffer (the hub then fails it)."""
        if self.ended is not None:
            return False
        self.last_push = now
        self._touch(self)
        # _idle(), inlined: this runs once per event per matching stream.
        write_now, waiter = self.write_now, self._waiter
        if write_now is not None and not self._chunks and waiter is not None and not waiter.done() and write_now(data):
            return True
        self._chunks.append(data)
        self._bytes += len(data)
        self._wake()
        return self._bytes <= COLLECTION_BUFFER_BYTES or self.kind is Kind.JOB

    def _idle(self) -> bool:
        """Nothing pending and the task waiting: an event may be written at once, in order."""
        waiter = self._waiter
        return self.write_now is not None and not self._chunks and waiter is not None and not waiter.done()

    def fail(self, error: bytes) -> None:
        """Drop what is pending; send `error` and end (SLOW)."""
        if self.ended is not None:
            return
        self._chunks = [error]
        self._bytes = len(error)
        self.ended = End.SLOW
        self._wake()

    def end(self, reason: End, final: Callable[[], bytes | None] | None = None) -> None:
        """End once what is pending is written; then `final()`, made at that moment (a last
        bookmark naming what the stream has really sent), if it gives anything."""
        if self.ended is not None:
            return
        self._final = final
        self.ended = reason
        self._wake()

    def take(self) -> bytes:
        chunks = self._chunks
        if not chunks:
            return b""
        self._chunks = []
        self._bytes = 0
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def pump(self, receive: Receive, send: Send) -> End:
        """Write events as they come until the stream ends; then end the response cleanly
        (unless the client has gone). Returns why it ended."""
        watcher = asyncio.ensure_future(until_disconnect(receive))
        watcher.add_done_callback(self._client_gone)
        try:
            while True:
                data = self.take()
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                    continue
                if self.ended is not None:
                    break
                await self._wait()
            if self.ended is not End.CLIENT:
                last = self._final() if self._final is not None else None
                await send({"type": "http.response.body", "body": last or b"", "more_body": False})
        finally:
            watcher.cancel()
        return self.ended

    def _client_gone(self, watcher: asyncio.Future[None]) -> None:
        if not watcher.cancelled():
            watcher.exception()  # retrieved: a failed receive means the client is gone too
        self.end(End.CLIENT)


class JobStream(Stream):
    """A watch of one job. At most one version event is pending: a newer version takes its
    place, so a client that cannot keep up is sent the latest version next."""

    __slots__ = ("job_id", "etag", "document", "_pending", "_before")

    def __init__(self, job_id: str, format: Format, touch: Callable[[Stream], None]) -> None:
        super().__init__(Kind.JOB, format, touch)
        self.job_id = job_id
        # The version the client has once what is pending is written: its ETag (None: no
        # session) and, when known, its document (the `object` of a DELETED event).
        self.etag: bytes | None = None
        self.document: Document | None = None
        self._pending: bytes | None = None
        self._before: tuple[bytes | None, Document | None] = (None, None)  # what it has now

    def offer(
        self, document: Document | None, revision: bytes, now: float, encoded: dict[object, bytes]
    ) -> bytes | None:
        """Make `document` (None: deleted) the next version this stream sends; the type of the
        event queued, None when the client has it already. `encoded` shares the event's bytes
        among the job's streams."""
        etag = document.etag if document is not None else None
        if self.ended is not None or etag == self.etag:
            return None
        before_etag, before_document = self._before if self._pending is not None else (self.etag, self.document)
        if etag == before_etag:  # back to the version the client has: nothing to send
            self._pending = None
            self.etag, self.document = before_etag, before_document
            return None
        if document is None:
            type_, body = events.DELETED, before_document
        else:
            type_, body = (events.MODIFIED if before_etag is not None else events.ADDED), document
        key = (type_, self.format, id(body), before_etag if document is None else etag)
        data = encoded.get(key)
        if data is None:
            data = encoded[key] = events.encode(
                self.format,
                type_,
                revision,
                events.one_line(body.body) if body is not None else b"null",
                etag=before_etag if document is None else etag,
                # An empty id resets an EventSource's Last-Event-ID: a reconnect after DELETED
                # must not claim the deleted version, or a job back with the same bytes is missed.
                event_id=b"" if document is None else etag,
            )
        self.last_push = now
        self._touch(self)
        if self._pending is None and self._idle() and self.write_now(data):  # type: ignore[misc]
            self.etag, self.document = etag, document
            return type_
        if self._pending is None:
            self._before = (self.etag, self.document)
        self._pending = data
        self.etag, self.document = etag, document
        self._wake()
        return type_

    def take(self) -> bytes:
        pending, self._pending = self._pending, None
        rest = super().take()
        if pending is None:
            return rest
        return pending + rest if rest else pending


async def until_disconnect(receive: Receive) -> None:
    """Returns when the client has gone (uvicorn's receive says so once the request is read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
