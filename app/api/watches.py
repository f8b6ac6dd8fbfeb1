"""The change stream's HTTP side (docs/contract.md#change-stream): watching the collection, watching one job, and the
long poll. Each is a plain ASGI coroutine: it validates, is admitted by the hub (or refused
with a 503), writes what the client is missing, then pumps live events until the stream ends."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from starlette.types import Receive, Scope, Send

from app.api import prefer, problems, routes
from app.api.etags import etag_matches, normalize
from app.api.listing import ListQuery, parse_job_query, parse_list_query
from app.changes import events
from app.changes.events import Format
from app.changes.hub import ChangeHub
from app.changes.streams import STREAM_WRITE, JobStream, Kind, Stream, until_disconnect
from app.errors import BadRequest, RevisionExpired, ServiceError
from app.store.changelog import Expired, StoreChange
from app.store.index import SessionFilter
from app.store.sessionfile import Document

# While sending an initial state or catching up: at most this many events per read of the log,
# and a send once this many bytes are encoded, so that a slow client holds the stream back (the
# send waits for its transport to drain) instead of having megabytes buffered for it.
INITIAL_CHUNK = 500
SEND_BYTES = 64 * 1024


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def _stream_headers(format: Format) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", format.value),
        (b"cache-control", b"no-cache"),
        # nginx (ingress-nginx) buffers responses unless told not to: events would wait there.
        (b"x-accel-buffering", b"no"),
        # NDJSON or SSE by the Accept header: a cache must not answer one with the other.
        (b"vary", b"Accept"),
    ]


async def _start(send: Send, format: Format) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": _stream_headers(format)})
    if format is Format.SSE:
        await send({"type": "http.response.body", "body": events.retry(), "more_body": True})


async def _headers_only(send: Send, format: Format) -> None:
    await _start(send, format)
    await send({"type": "http.response.body", "body": b""})


def _direct_write(scope: Scope) -> Callable[[bytes], bool] | None:
    write: Callable[[bytes], bool] | None = scope.get("extensions", {}).get(STREAM_WRITE)
    return write


def collection_event(filter: SessionFilter, change: StoreChange) -> tuple[bytes, bytes] | None:
    """What a change is to a collection watch with `filter`: (type, summary), or None. A session
    that starts matching is ADDED, one that stops matching is DELETED with its last matching
    summary (the filter is checked against the old and the new entry)."""
    old, new = change.old, change.new
    was = old is not None and filter.matches(old.status, old.user_id)
    if new is not None and filter.matches(new.status, new.user_id):
        return (events.MODIFIED if was else events.ADDED), new.summary
    if was:
        return events.DELETED, old.summary  # type: ignore[union-attr]  # was: old is set
    return None


# --- what an EventSource cannot take: refusals as a stream that ends ---------------------------------


def is_sse_watch(scope: Scope) -> bool:
    """Whether the request is a watch that asks for Server-Sent Events (an EventSource)."""
    query_string: bytes = scope["query_string"]
    if b"watch" not in query_string and b"%" not in query_string:
        return False
    if Format.for_accept(header(scope, b"accept")) is not Format.SSE:
        return False
    try:
        if routes.route_template(scope["path"]) == routes.JOBS:
            return parse_list_query(query_string).watch
        return parse_job_query(query_string)
    except BadRequest:
        return False


async def sse_refusal(scope: Scope, send: Send, exc: ServiceError) -> bool:
    """Answer a refused SSE watch so that an EventSource recovers by itself; False when this
    refusal is not one to answer so (only a 410 and a 503 are; NDJSON callers get the status).

    An EventSource closes for good on any status but 200, and does not expose the status. So the
    refusal is a 200 stream that ends at once, carrying the problem in an ERROR event and a
    `retry:`: the browser reconnects after it. For a 410 (an expired revision) the ERROR event
    also carries an empty `id`, which clears the browser's last event id: it reconnects without
    one and gets a fresh initial state, and the page, told by the ERROR, resets its copy. For a
    503 (warming, draining, the stream limit) the last id is kept, and `retry:` is the
    Retry-After: the browser resumes where it was once the service can take it."""
    found = problems.problem_of(exc)
    if found.status not in (410, 503) or not is_sse_watch(scope):
        return False
    scope[routes.LABEL_KEY] = (
        routes.JOBS_WATCH if routes.route_template(scope["path"]) == routes.JOBS else routes.JOB_WATCH
    )
    hub: ChangeHub | None = scope["state"].get("hub")
    revision = hub.token(hub.delivered) if hub is not None else b""
    retry_s = float(found.retry_after) if found.retry_after is not None else None
    body = events.retry(retry_s) + events.encode(
        Format.SSE,
        events.ERROR,
        revision,
        problems.error_body(exc),
        event_id=b"" if found.status == 410 else None,
    )
    await send({"type": "http.response.start", "status": 200, "headers": _stream_headers(Format.SSE)})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
    return True


# --- GET /api/v2/jobs?watch=true ---------------------------------------------------------------


async def watch_collection(scope: Scope, receive: Receive, send: Send, query: ListQuery) -> None:
    scope[routes.LABEL_KEY] = routes.JOBS_WATCH
    hub: ChangeHub = scope["state"]["hub"]
    format = Format.for_accept(header(scope, b"accept"))
    # An EventSource that reconnects sends the last id it saw: newer than the URL's revision.
    last_event_id = header(scope, b"last-event-id")
    token = last_event_id.decode("latin-1").strip() if last_event_id else query.revision
    position: int | None = None
    if token is not None:
        try:
            position = hub.store.log.parse(token)
        except Expired:
            # An EventSource would close for good on a 410: sse_refusal turns it into a reset.
            raise RevisionExpired(
                f"revision {token[:80]!r} is not in this replica's history (another replica's, from before a "
                "restart, or too old): list again and watch from the list's X-Revision"
            ) from None
    hub.admit(Kind.COLLECTION.value)  # a HEAD too: it answers as a GET would begin
    if scope["method"] == "HEAD":
        hub.release(Kind.COLLECTION.value)
        await _headers_only(send, format)
        return
    stream = Stream(Kind.COLLECTION, format, hub.touch)
    hub.open_stream(stream)
    filter = query.filter(hub.store.finished_statuses)
    try:
        await _start(send, format)
        if position is None:
            position = await _send_initial_state(hub, stream, filter, send)
        if position is not None and await _catch_up(hub, stream, filter, position, send):
            stream.write_now = _direct_write(scope)
            hub.attach_collection(stream, filter)
        await stream.pump(receive, send)
    finally:
        hub.close_stream(stream, filter)


async def _send_initial_state(hub: ChangeHub, stream: Stream, filter: SessionFilter, send: Send) -> int | None:
    """ADDED for every session that matches now, then the initial_events_end bookmark; the
    revision they reflect (None if the stream ended meanwhile)."""
    # Off the loop: O(matching sessions) under the store's lock, long for a large folder.
    summaries, revision = await hub.loader.run(
        functools.partial(
            hub.store.snapshot, statuses=filter.statuses, user_id=filter.user_id, include_saved=filter.include_saved
        )
    )
    token = hub.token(revision)
    format = stream.format
    parts: list[bytes] = []
    size = 0
    for number, summary in enumerate(summaries):
        # No SSE id on these: an EventSource reconnecting in the middle must not resume from
        # a revision whose state it has only half received.
        event = events.encode(format, events.ADDED, token, summary)
        parts.append(event)
        size += len(event)
        if size >= SEND_BYTES or number == len(summaries) - 1:
            if stream.ended is not None:
                return None
            await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
            parts, size = [], 0
            await asyncio.sleep(0)  # a large initial state must not hold the loop
    hub.stats.sent(Kind.COLLECTION, events.ADDED, len(summaries))
    if stream.ended is not None:
        return None
    bookmark = events.encode(format, events.BOOKMARK, token, event_id=token, initial_events_end=True)
    hub.stats.sent(Kind.COLLECTION, events.BOOKMARK, 1)
    await send({"type": "http.response.body", "body": bookmark, "more_body": True})
    stream.position = revision
    return revision


async def _catch_up(hub: ChangeHub, stream: Stream, filter: SessionFilter, position: int, send: Send) -> bool:
    """Write the changes after `position` from the log until the stream is level with the hub;
    True once it is (attach it then, before anything else runs), False if it ended."""
    store, format = hub.store, stream.format
    stream.position = position
    while stream.ended is None:
        hub.catch_up(position)
        if position >= hub.delivered:
            return True
        try:
            changes = store.changes_after(position, min(INITIAL_CHUNK, hub.delivered - position))
        except Expired:
            stream.fail(
                events.error(
                    format,
                    hub.token(hub.delivered),
                    problems.error_body(
                        RevisionExpired(
                            "the changes since this stream's revision are no longer held: list again and watch "
                            "from the list's X-Revision"
                        )
                    ),
                )
            )
            return False
        parts: list[bytes] = []
        size = 0
        for change in changes:
            event = collection_event(filter, change)
            if event is not None:
                token = hub.token(change.revision)
                parts.append(events.encode(format, event[0], token, event[1], event_id=token))
                size += len(parts[-1])
                hub.stats.sent(Kind.COLLECTION, event[0], 1)
            if size >= SEND_BYTES or (change is changes[-1] and parts):
                await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
                parts, size = [], 0
                stream.position = change.revision
                if stream.ended is not None:
                    return False
        position = stream.position = changes[-1].revision
        await asyncio.sleep(0)
    return False


# --- GET /api/v2/jobs/{job_id}?watch=true ------------------------------------------------------


async def watch_job(scope: Scope, receive: Receive, send: Send, job_id: str) -> None:
    scope[routes.LABEL_KEY] = routes.JOB_WATCH
    hub: ChangeHub = scope["state"]["hub"]
    store = hub.store
    format = Format.for_accept(header(scope, b"accept"))
    given = header(scope, b"last-event-id") or header(scope, b"if-none-match")
    hub.admit(Kind.JOB.value)
    if scope["method"] == "HEAD":
        hub.release(Kind.JOB.value)
        await _headers_only(send, format)
        return
    stream = JobStream(job_id, format, hub.touch)
    hub.open_stream(stream)
    try:
        await _start(send, format)
        current = store.current_etag(job_id)
        if given:
            if current is not None and etag_matches(given, current):
                stream.etag, stream.document = current, store.current_document(job_id)
                if stream.document is None:  # evicted: read it, as the object of a DELETED
                    stream.document = await _load_quietly(hub, job_id, current)
            elif current is None and given.strip() != b"*":
                # The client has a version of a job that is gone now: it hears DELETED.
                stream.etag = normalize(given.split(b",")[0])
        stream.write_now = _direct_write(scope)
        hub.attach_job(stream)
        revision = hub.token(hub.delivered)
        if current is None:
            if stream.etag is not None:
                hub.offer(job_id, None, revision, None)
        elif stream.etag != current:
            document = store.current_document(job_id)
            if document is None or document.etag != current:
                try:
                    document = await hub.loader.load(job_id)
                except ServiceError:
                    document = None  # unreadable now: its next version is sent when it comes
            if document is not None:
                hub.offer(job_id, document, revision, None)
        await stream.pump(receive, send)
    finally:
        hub.close_stream(stream)


# --- the long poll: GET /api/v2/jobs/{job_id} + If-None-Match + Prefer: wait=N --------------------


async def _load_quietly(hub: ChangeHub, job_id: str, etag: bytes) -> Document | None:
    try:
        document: Document = await hub.loader.load(job_id)
    except ServiceError:
        return None
    return document if document.etag == etag else None


async def long_poll(
    scope: Scope, receive: Receive, send: Send, document: Document, stale: bool, requested: int
) -> None:
    """If-None-Match matched `document`: answer when the job changes, or 304 after the wait."""
    scope[routes.LABEL_KEY] = routes.JOB_WAIT
    hub: ChangeHub = scope["state"]["hub"]
    loop = asyncio.get_running_loop()
    seconds = min(float(requested), hub.settings.max_wait_s)
    if not (hub.ready and not hub.stopped):
        seconds = 0.0  # warming or shutting down: answer now, and say no wait was applied
    applied = (b"preference-applied", prefer.applied(seconds))
    deadline = loop.time() + seconds
    if seconds > 0:
        hub.admit("wait")
        reason = "client"  # if the task is cancelled (a graceful timeout)
        try:
            reason = await _wait_and_answer(scope, receive, send, hub, document, applied, deadline)
        finally:
            hub.finish_wait(reason)
        if reason != "timeout" and reason != "drain":
            return
    headers = document.stale_not_modified_headers() if stale else document.not_modified_headers
    await send({"type": "http.response.start", "status": 304, "headers": [*headers, applied]})
    await send({"type": "http.response.body", "body": b""})


async def _wait_and_answer(
    scope: Scope,
    receive: Receive,
    send: Send,
    hub: ChangeHub,
    document: Document,
    applied: tuple[bytes, bytes],
    deadline: float,
) -> str:
    """Wait for the job to differ from `document`; answer if it did (200, or the problem of a
    deletion). Why the wait ended: changed, timeout, drain, or client (nothing to answer)."""
    loop = asyncio.get_running_loop()
    job_id = document.job_id
    while True:
        reason = await _wait_for_change(hub, receive, job_id, document.etag, deadline - loop.time())
        if reason == "client":
            scope[routes.CLIENT_GONE_KEY] = True  # no answer to give: counted as a 499, not a 500
            return reason
        if reason != "changed":
            return reason
        try:
            current, stale = hub.store.lookup(job_id)
            if current is None:
                current = await scope["state"]["loader"].load(job_id)
        except ServiceError as exc:  # deleted (404), or unreadable now (503)
            response = problems.error_response(exc, {"Preference-Applied": applied[1].decode()})
            await response(scope, receive, send)
            return reason
        if current.etag == document.etag and loop.time() < deadline:
            continue  # changed and changed back before we looked: still the client's version
        fresh = current.stale_headers() if stale else current.headers
        await send({"type": "http.response.start", "status": 200, "headers": [*fresh, applied]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else current.body})
        return reason


async def _wait_for_change(hub: ChangeHub, receive: Receive, job_id: str, etag: bytes, seconds: float) -> str:
    if seconds <= 0:
        return "timeout"
    wait = hub.open_wait(job_id, etag, seconds)
    watcher = asyncio.ensure_future(until_disconnect(receive))
    watcher.add_done_callback(lambda _: wait.resolve("client"))
    try:
        return await wait.future
    finally:
        watcher.cancel()
        hub.close_wait(wait)
