"""The service's wire format, read and written without any I/O: paths, NDJSON lines, events,
pages, `Link`, `Prefer` and `Preference-Applied`. The sync and async clients share all of it."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from sessions_client.errors import ProtocolError
from sessions_client.models import Page, Session, Summary

JOBS = "/api/v2/jobs"
NDJSON = "application/x-ndjson"
# docs/contract.md#files; checked here because httpx would resolve a job id such as ".." inside the URL.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Events are one line; a job watch's carries a whole document (SESSIONS_MAX_FILE_BYTES, 8 MiB by
# default). A line past this is no event of this service: the stream is dropped and resumed.
MAX_LINE_BYTES = 128 * 1024 * 1024
_LINK = re.compile(r"<([^>]*)>\s*((?:;[^,;]*)*)")
DEFAULT_TIMEOUT_S = 10.0
# Longer than the server's SESSIONS_BOOKMARK_S (15 s): an idle stream gets a bookmark every
# 15 s, so a read that waits this long means a dead replica or a half-open connection.
DEFAULT_STREAM_TIMEOUT_S = 60.0
DEFAULT_CACHE_SIZE = 1024
MAX_PAGE = 1000
# identity: a proxy that compresses may hold events back to fill its compression blocks.
STREAM_HEADERS = {"Accept": NDJSON, "Accept-Encoding": "identity"}
# A collection watch's own key, for a load balancer to hash on (deploy/haproxy/haproxy.cfg).
CLIENT_KEY_HEADER = "X-Sessions-Client"


def request_headers(token: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
    merged = {"User-Agent": "job-sessions-client/1.0", **(headers or {})}
    if token is not None:
        merged["Authorization"] = f"Bearer {token}"
    return merged


def check_limit(limit: int) -> str:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be from 1 to {MAX_PAGE}")
    return str(limit)


def job_path(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"{job_id!r} is not a job id: 1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit")
    return f"{JOBS}/{job_id}"


class LineDecoder:
    """Splits an NDJSON body into lines as chunks arrive. Only b"\\n" ends a line: the server
    never writes one inside an event, while str.splitlines would also split on the U+2028 a
    JSON string may hold. Each byte is scanned once, however many chunks a line spans."""

    def __init__(self, limit: int = MAX_LINE_BYTES) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no line end
        self._limit = limit

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += chunk
        lines: list[bytes] = []
        start = 0
        while (end := buffer.find(b"\n", max(start, self._scanned))) >= 0:
            line = bytes(buffer[start:end]).strip()
            if line:
                lines.append(line)
            start = end + 1
        if start:
            del buffer[:start]
        self._scanned = len(buffer)
        if len(buffer) > self._limit:
            raise ProtocolError(f"an event longer than {self._limit} bytes")
        return lines

    @property
    def pending(self) -> bool:
        """Part of an event is buffered: a stream that ends now was cut in the middle of one."""
        return bool(self._buffer.strip())


def load_json(body: bytes, what: str) -> Any:
    """`body` parsed; a ProtocolError naming `what` (an event, a list page...) if it is not JSON."""
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"{what} that is not JSON: {body[:200]!r}") from exc


def load_event(line: bytes) -> dict[str, Any]:
    event = load_json(line, "an event")
    if (
        not isinstance(event, dict)
        or not isinstance(event.get("type"), str)
        or not isinstance(event.get("revision"), str)
    ):
        raise ProtocolError(f"not an event: {line[:200]!r}")
    return event


def next_query(link: str | None) -> str | None:
    """The query of the `rel="next"` target of a Link header. Only the query is kept and sent
    to this client's own list path: a proxy that serves the API under a prefix leaves the
    server's absolute path without it."""
    if not link:
        return None
    for match in _LINK.finditer(link):
        params = [param.strip().lower().replace(" ", "") for param in match.group(2).split(";")]
        if 'rel="next"' in params or "rel=next" in params:
            return urlsplit(match.group(1)).query or None
    return None


def load_page(headers: Mapping[str, str], body: bytes) -> Page:
    items = load_json(body, "a list page")
    if not isinstance(items, list):
        raise ProtocolError("a list page that is not a JSON array")
    total = headers.get("x-total-count")
    return Page(
        tuple(Summary.from_json(item) for item in items),
        headers.get("x-revision"),
        int(total) if total is not None and total.isdigit() else None,
        next_query(headers.get("link")),
    )


def load_document(body: bytes) -> dict[str, Any]:
    document = load_json(body, "a session")
    if not isinstance(document, dict):
        raise ProtocolError("a session that is not a JSON object")
    return document


def load_session(job_id: str, headers: Mapping[str, str], body: bytes) -> Session:
    etag = headers.get("etag")
    if etag is None:
        raise ProtocolError(f"a session without an ETag: {job_id}")
    return Session(job_id, etag, load_document(body), headers.get("x-session-stale") == "true")


def applied_wait(headers: Mapping[str, str]) -> float | None:
    """The seconds `Preference-Applied: wait=N` says the server waited (capped at its
    SESSIONS_MAX_WAIT_S); None when it applied no wait."""
    for preference in headers.get("preference-applied", "").split(","):
        name, _, value = preference.partition("=")
        if name.strip().lower() == "wait":
            try:
                return float(value.strip().strip('"'))
            except ValueError:
                return None
    return None
