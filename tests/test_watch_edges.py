"""The change stream's edges, each found by a review and fixed: a request pipelined behind a
stream, a stream ending before it has sent everything, a kept-alive connection after a stream,
a long poll whose client gives up, resuming after a deletion, evicted documents, odd clocks."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson

from tests.support import Server, encode, put_session, session_doc, wait_until
from tests.support.ops import scrape, wait_for_scrape
from tests.support.watch import Watch, open_raw_stream, read_head
from tests.test_reliability_http import server_holds

Open = Callable[..., Watch]
Serve = Callable[..., Server]


def test_a_request_pipelined_behind_a_stream_neither_leaks_it_nor_stops_the_others(
    sessions_dir: Path, serve: Serve, watch: Open
) -> None:
    """uvicorn tells only the newest request of a connection that the client went away: the
    stream before it was left open for its lifetime, and its closed transport then broke the
    delivery of every change to every stream."""
    put_session(sessions_dir, "j")
    server = serve(sessions_dir, env={"SESSIONS_BOOKMARK_S": "0.3"})
    good = watch(server, "/api/v2/jobs?watch=true")
    good.wait_for(lambda event: event.get("initial_events_end", False))
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"GET /api/v2/jobs?watch=true HTTP/1.1\r\nHost: x\r\n\r\nGET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    wait_for_scrape(server, lambda s: s.value("sessions_streams_open", kind="collection") == 1, what="let go")
    for n in range(3):
        put_session(sessions_dir, f"k{n}")
    good.wait(lambda s: {"k0", "k1", "k2"} <= {e["object"]["job_id"] for e in s.changes()}, what="every change")
    bookmarks = sum(event["type"] == "BOOKMARK" for event in good.events)
    good.wait(lambda s: sum(event["type"] == "BOOKMARK" for event in s.events) > bookmarks + 1, what="heartbeats")


def _events(data: bytes) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in data.split(b"\n") if line.startswith(b"{")]


def _read_to_the_end(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(1 << 20)
        assert chunk, "the connection closed before the response ended"
        data += chunk
    return data


def test_a_stream_ending_in_its_initial_state_gives_no_revision_to_resume_from(
    sessions_dir: Path, serve: Serve
) -> None:
    for n in range(300):
        put_session(sessions_dir, f"s{n:03d}", user_id="u" * 20_000)  # 6 MB of initial state
    server = serve(sessions_dir, env={"SESSIONS_STREAM_TIMEOUT_S": "0.05"})
    with contextlib.closing(open_raw_stream(server.base_url, "/api/v2/jobs?watch=true", 4096)) as sock:
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        wait_for_scrape(server, lambda s: s.total("sessions_streams_ended_total", kind="collection") == 0)
        time.sleep(0.5)  # pacing: the client is slow on purpose, so that the lifetime ends first
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        events = _events(_read_to_the_end(sock))
    assert len(events) < 300, "the whole initial state was sent: the test did not cut it"
    assert all(event["type"] == "ADDED" for event in events), events[-1]  # no bookmark to resume from


def test_a_stream_ending_while_catching_up_bookmarks_only_what_it_sent(sessions_dir: Path, serve: Serve) -> None:
    server = serve(sessions_dir, env={"SESSIONS_STREAM_TIMEOUT_S": "0.05"})
    revision = server.get("/api/v2/jobs").headers["x-revision"]
    for n in range(300):
        put_session(sessions_dir, f"s{n:03d}", user_id="u" * 20_000)
    wait_until(lambda: server.get("/api/v2/jobs?limit=1").headers["x-total-count"] == "300", what="300 sessions")
    target = f"/api/v2/jobs?watch=true&revision={revision}"
    with contextlib.closing(open_raw_stream(server.base_url, target, 4096)) as sock:
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        time.sleep(0.5)  # pacing: a slow client, so that the lifetime ends first
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        events = _events(_read_to_the_end(sock))
    changes = [event for event in events if event["type"] != "BOOKMARK"]
    assert len(changes) < 300, "every change was sent: the test did not cut the catch-up"
    assert events[-1]["type"] == "BOOKMARK"
    assert events[-1]["revision"] == changes[-1]["revision"]  # not the head: nothing skipped on resume


def test_a_kept_alive_connection_after_a_stream_is_watched_again(sessions_dir: Path, serve: Serve) -> None:
    """Once a stream's response is over, the connection's next response is checked as any."""
    (sessions_dir / "big.json").write_bytes(encode(session_doc("big", payload="z" * 4_000_000)))
    server = serve(sessions_dir, env={"SESSIONS_KEEPALIVE_S": "2", "SESSIONS_LOG_LEVEL": "warning"})
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(b"GET /api/v2/jobs?watch=false&limit=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(10)
        head = read_head(sock)
        length = int(
            next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
        )
        while length > 0:
            length -= len(sock.recv(length))
        sock.sendall(b"GET /api/v2/jobs/big HTTP/1.1\r\nHost: x\r\n\r\n")  # then never read it
        client_port = sock.getsockname()[1]
        wait_until(lambda: not server_holds(server.process.pid, int(port), client_port), 15, what="let go")


def test_a_long_poll_whose_client_gives_up_is_no_server_error(sessions_dir: Path, serve: Serve) -> None:
    put_session(sessions_dir, "j")
    server = serve(sessions_dir)
    etag = server.get("/api/v2/jobs/j").headers["etag"]
    with contextlib.suppress(httpx.ReadTimeout):
        httpx.get(f"{server.base_url}/api/v2/jobs/j", headers={"If-None-Match": etag, "Prefer": "wait=60"}, timeout=1)
    scraped = wait_for_scrape(
        server,
        lambda s: s.value("sessions_streams_ended_total", kind="wait", reason="client") == 1,
        what="the wait counted as ended by its client",
    )
    route = "/api/v2/jobs/{job_id}?wait"
    assert scraped.value("sessions_http_requests_total", route=route, method="GET", status="499") == 1
    assert scraped.total("sessions_http_requests_total", route=route, status="500") == 0
    assert scraped.value("sessions_streams_open", kind="wait") == 0


def test_a_deleted_job_resets_the_sse_id(sessions_dir: Path, serve: Serve, watch: Open) -> None:
    """After DELETED an EventSource must not claim the deleted version: when the job comes back
    with the same bytes while it reconnects, it must hear ADDED."""
    put_session(sessions_dir, "j")
    body = (sessions_dir / "j.json").read_bytes()
    server = serve(sessions_dir, env={"SESSIONS_BOOKMARK_S": "0.5"})
    first = watch(server, "/api/v2/jobs/j?watch=true", sse=True)
    first.wait_for(lambda event: event["type"] == "ADDED")
    (sessions_dir / "j.json").unlink()
    deleted = first.wait_for(lambda event: event["type"] == "DELETED")
    assert deleted["_id"] == ""
    first.close()
    (sessions_dir / "j.json").write_bytes(body)  # back, the same bytes
    wait_until(lambda: server.get("/api/v2/jobs/j").status_code == 200, what="the job back")
    again = watch(server, "/api/v2/jobs/j?watch=true", sse=True)  # no Last-Event-ID: it was reset
    assert again.wait_for(lambda event: event["type"] != "BOOKMARK")["type"] == "ADDED"


def test_deleted_carries_the_last_version_after_a_resume_with_the_document_evicted(
    sessions_dir: Path, serve: Serve, watch: Open
) -> None:
    put_session(sessions_dir, "j", status="running")
    put_session(sessions_dir, "other")
    server = serve(sessions_dir, env={"SESSIONS_CACHE_MAX_ENTRIES": "1"})
    document, etag = server.get("/api/v2/jobs/j").json(), server.get("/api/v2/jobs/j").headers["etag"]
    server.get("/api/v2/jobs/other")  # evicts j
    stream = watch(server, "/api/v2/jobs/j?watch=true", headers={"Last-Event-ID": etag})
    assert stream.wait_status() == 200
    wait_for_scrape(server, lambda s: s.value("sessions_streams_open", kind="job") == 1, what="open")
    (sessions_dir / "j.json").unlink()
    deleted = stream.wait_for(lambda event: event["type"] == "DELETED")
    assert deleted["object"] == document


def test_a_file_with_an_old_modification_time_does_not_skew_the_lag(
    sessions_dir: Path, serve: Serve, watch: Open
) -> None:
    server = serve(sessions_dir)
    stream = watch(server, "/api/v2/jobs?watch=true")
    stream.wait_for(lambda event: event.get("initial_events_end", False))
    path = sessions_dir / ".copied.tmp"
    path.write_bytes(encode(session_doc("copied")))
    os.utime(path, (time.time() - 86_400, time.time() - 86_400))  # as cp -p or rsync -a keep it
    path.rename(sessions_dir / "copied.json")
    stream.wait_for(lambda event: event["type"] == "ADDED")
    assert scrape(server).value("sessions_stream_event_lag_seconds_sum") < 60


def test_head_of_a_watch_at_the_stream_limit_is_a_503(sessions_dir: Path, serve: Serve, watch: Open) -> None:
    server = serve(sessions_dir, env={"SESSIONS_MAX_STREAMS": "1"})
    assert watch(server, "/api/v2/jobs?watch=true").wait_status() == 200
    assert server.client.head("/api/v2/jobs?watch=true").status_code == 503


def test_the_accept_header_is_case_insensitive(sessions_dir: Path, serve: Serve) -> None:
    server = serve(sessions_dir)
    response = server.client.head("/api/v2/jobs?watch=true", headers={"Accept": "Text/Event-Stream"})
    assert response.headers["content-type"].startswith("text/event-stream")
