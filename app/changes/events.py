"""Change-stream events as bytes on the wire: NDJSON (one JSON object a line) or Server-Sent
Events (`id:`, `event:`, `data:`). An event is encoded once per format and filter, then shared
by every stream that wants it (docs/contract.md#change-stream)."""

from __future__ import annotations

import enum
import random

import orjson


class Format(enum.Enum):
    NDJSON = b"application/x-ndjson"
    SSE = b"text/event-stream; charset=utf-8"

    @classmethod
    def for_accept(cls, accept: bytes | None) -> Format:
        """SSE when the client accepts `text/event-stream` (with a q above 0), else NDJSON."""
        if accept is None:
            return cls.NDJSON
        accept = accept.lower()
        if b"text/event-stream" not in accept:
            return cls.NDJSON
        for media_range in accept.split(b","):
            media_type, _, parameters = media_range.partition(b";")
            if media_type.strip().lower() != b"text/event-stream":
                continue
            for parameter in parameters.split(b";"):
                name, _, value = parameter.partition(b"=")
                if name.strip().lower() == b"q" and value.strip() in (b"0", b"0.0", b"0.00", b"0.000"):
                    return cls.NDJSON
            return cls.SSE
        return cls.NDJSON


ADDED = b"ADDED"
MODIFIED = b"MODIFIED"
DELETED = b"DELETED"
BOOKMARK = b"BOOKMARK"
ERROR = b"ERROR"
TYPES = (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR)


def encode(
    format: Format,
    type_: bytes,
    revision: bytes,
    object_json: bytes | None = None,
    *,
    etag: bytes | None = None,
    event_id: bytes | None = None,
    initial_events_end: bool = False,
) -> bytes:
    """One event. `object_json` must be one line of JSON (summaries are; documents go through
    `one_line` first). SSE's `id:` is what a reconnecting EventSource sends back as
    Last-Event-ID: the revision for the collection, the ETag for a job."""
    parts = [b'{"type":"', type_, b'","revision":"', revision, b'"']
    if etag is not None:
        parts += (b',"etag":', orjson.dumps(etag.decode("latin-1")))
    if initial_events_end:
        parts.append(b',"initial_events_end":true')
    if object_json is not None:
        parts += (b',"object":', object_json)
    parts.append(b"}")
    if format is Format.NDJSON:
        parts.append(b"\n")
        return b"".join(parts)
    head = [b"id: ", event_id, b"\n"] if event_id else [b"id\n"] if event_id is not None else []
    return b"".join([*head, b"event: ", type_, b"\ndata: ", *parts, b"\n\n"])


def one_line(document: bytes) -> bytes:
    """A valid JSON document on one line. JSON forbids raw line breaks inside strings, so every
    CR and LF in valid JSON is white space between tokens, which JSON never needs: removing them
    is a C-speed copy, where parsing and re-encoding a megabyte document would hold the event
    loop for milliseconds."""
    if b"\n" in document:
        document = document.replace(b"\n", b"")
    if b"\r" in document:
        document = document.replace(b"\r", b"")
    return document


def error(format: Format, revision: bytes, problem: bytes) -> bytes:
    """An ERROR event; `problem` is the problem document (app.api.problems builds it)."""
    return encode(format, ERROR, revision, problem)


# An EventSource reconnects this long after its stream ends: spread, so that the pages of a
# replica that went away do not all come back in the same instant (docs/browsers.md).
RETRY_S = (1.0, 3.0)


def retry(seconds: float | None = None) -> bytes:
    """An SSE `retry:` field (milliseconds) in a block of its own, which dispatches no event:
    the stream's spread by default, or `seconds` (a Retry-After) to twice that."""
    low, high = RETRY_S if seconds is None else (seconds, 2 * seconds)
    return b"retry: %d\n\n" % round(random.uniform(low, high) * 1000)
