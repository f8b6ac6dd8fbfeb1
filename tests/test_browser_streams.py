"""Streams a browser keeps (docs/browsers.md): an EventSource closes for good on any status but
200, so an SSE watch answers an expired revision and a 503 with a 200 stream that ends at once,
carrying the problem in an ERROR event and a `retry:`; the 410's ERROR clears the browser's last
event id. Every SSE stream carries a jittered `retry:`. NDJSON callers keep the statuses."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from app.api.jobs import ApiFastPath
from app.changes import events
from tests.support import Server, put_session, start_server
from tests.support.watch import Watch

Open = Callable[..., Watch]
Serve = Callable[..., Server]
OTHER_REPLICA = "aaaaaaaaaaaa.3"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("sessions")
    put_session(folder, "j")
    running = start_server(folder, tmp_path_factory.mktemp("logs"))
    yield running
    running.stop()


def _ended(stream: Watch) -> bool:
    return stream.ended


@pytest.mark.parametrize("path", ["/api/v2/jobs?watch=true", "/api/v2/jobs/j?watch=true"])
def test_every_sse_stream_begins_with_a_jittered_retry(server: Server, watch: Open, path: str) -> None:
    streams = [watch(server, path, sse=True) for _ in range(6)]
    for stream in streams:
        stream.wait(lambda s: s.retries and s.events, what="a retry and an event")
        assert bytes(stream.raw).startswith(b"retry: ")
        low, high = events.RETRY_S
        assert low * 1000 <= stream.retries[0] <= high * 1000
    assert len({stream.retries[0] for stream in streams}) > 1, "six streams, one retry: no jitter"


def test_an_ndjson_stream_has_no_retry(server: Server, watch: Open) -> None:
    stream = watch(server, "/api/v2/jobs?watch=true")
    stream.wait_for(lambda event: event.get("initial_events_end", False))
    assert bytes(stream.raw).startswith(b"{")


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/v2/jobs?watch=true", {"Last-Event-ID": OTHER_REPLICA}),
        (f"/api/v2/jobs?watch=true&revision={OTHER_REPLICA}&status=running", {}),
    ],
)
def test_an_expired_revision_resets_an_event_source(
    server: Server, watch: Open, path: str, headers: dict[str, str]
) -> None:
    stream = watch(server, path, sse=True, headers=headers)
    stream.wait(_ended, what="the end of the refusal")
    assert stream.failure is None
    assert stream.status == 200
    assert stream.response_headers is not None
    assert stream.response_headers["content-type"].startswith("text/event-stream")
    assert [event["type"] for event in stream.events] == ["ERROR"]
    error = stream.events[0]
    assert error["object"]["status"] == 410
    assert error["object"]["type"] == "/problems/revision-expired"
    assert error["_event"] == "ERROR"
    assert error["_id"] == "", "the ERROR must clear the browser's last event id"
    assert stream.retries and stream.retries[0] >= 1000
    # NDJSON callers (the library) keep the 410
    assert server.get(path, headers=headers).status_code == 410


@pytest.mark.parametrize("path", ["/api/v2/jobs?watch=true", "/api/v2/jobs/j?watch=true"])
def test_a_503_becomes_a_retry_an_event_source_honours(
    sessions_dir: Path, serve: Serve, watch: Open, path: str
) -> None:
    put_session(sessions_dir, "j")
    limited = serve(sessions_dir, env={"SESSIONS_MAX_STREAMS": "1"})
    holder = watch(limited, "/api/v2/jobs/j?watch=true")
    assert holder.wait_status() == 200
    revision = limited.get("/api/v2/jobs").headers["x-revision"]  # a revision the server holds
    refused = watch(limited, path, sse=True, headers={"Last-Event-ID": revision})
    refused.wait(_ended, what="the end of the refusal")
    assert refused.status == 200 and refused.failure is None
    [error] = refused.events
    assert error["type"] == "ERROR" and error["object"]["status"] == 503
    assert error["_id"] is None, "a 503 must keep the browser's last event id: it resumes from there"
    # Retry-After is 1 s: the browser waits that, spread up to twice as long
    assert 1000 <= refused.retries[0] <= 2000
    assert limited.get(path).status_code == 503  # NDJSON: the status, with Retry-After
    assert limited.get(path).headers["retry-after"] == "1"


def test_a_bad_sse_request_keeps_its_400(server: Server) -> None:
    """Only what the browser should retry becomes a retry: a 400 is a bug in the page."""
    response = server.get("/api/v2/jobs?watch=true&limit=5", headers={"Accept": "text/event-stream"})
    assert response.status_code == 400


def test_retry_spreads_between_the_bounds() -> None:
    values = {int(events.retry(4.0).split()[1]) for _ in range(50)}
    assert min(values) >= 4000 and max(values) <= 8000 and len(values) > 1
    assert events.retry().endswith(b"\n\n")


def _warming_request(accept: str | None) -> tuple[int, dict[bytes, bytes], bytes]:
    """A watch sent to the API's fast path while the warm-up runs (in process: the warm-up of a
    real server is over before a test could time a request into it)."""

    async def never(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("no endpoint runs while warming")

    messages: list[Message] = []

    async def send(message: Message) -> None:
        messages.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    headers = [(b"accept", accept.encode())] if accept else []
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/v2/jobs",
        "query_string": b"watch=true",
        "headers": headers,
        "state": {"reconciler": SimpleNamespace(ready=threading.Event())},
    }
    fast = ApiFastPath(never, {"job": never, "jobs": never})
    asyncio.run(fast(scope, receive, send))
    start, body = messages[0], b"".join(message.get("body", b"") for message in messages[1:])
    return start["status"], dict(start["headers"]), body


def test_warming_up_is_a_retry_for_an_event_source_and_a_503_for_ndjson() -> None:
    status, headers, body = _warming_request("text/event-stream")
    assert status == 200 and headers[b"content-type"].startswith(b"text/event-stream")
    retry, _, event = body.decode().partition("\n\n")
    assert 1000 <= int(retry.removeprefix("retry: ")) <= 2000
    assert event.startswith("event: ERROR\ndata: ")  # no id: the browser keeps its own
    problem = orjson.loads(event.removeprefix("event: ERROR\ndata: "))["object"]
    assert problem["status"] == 503 and problem["type"].endswith("/problems/warming-up")
    status, headers, _ = _warming_request(None)
    assert status == 503 and headers[b"retry-after"] == b"1"
