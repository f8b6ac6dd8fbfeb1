"""The change stream's limits and operations (docs/contract.md#stream-limits): the stream limit, clients that stop
reading, what an idle stream costs, metrics and the token, through the real server."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from pathlib import Path

from app.api.application import LOADER_THREADS
from tests.support import Server, put_session, wait_until
from tests.support.ops import scrape, wait_for_scrape
from tests.support.reliability import process_figures, wait_quiet_figures
from tests.support.watch import Watch, open_raw_stream, read_head

Open = Callable[..., Watch]
Serve = Callable[..., Server]


def test_past_the_stream_limit_a_503_with_retry_after(sessions_dir: Path, serve: Serve, watch: Open) -> None:
    put_session(sessions_dir, "j")
    server = serve(sessions_dir, env={"SESSIONS_MAX_STREAMS": "2", "SESSIONS_BOOKMARK_S": "0.5"})
    first = watch(server, "/api/v2/jobs?watch=true")
    second = watch(server, "/api/v2/jobs/j?watch=true")
    assert first.wait_status() == second.wait_status() == 200
    for target in ("/api/v2/jobs?watch=true", "/api/v2/jobs/j?watch=true"):
        refused = server.get(target)
        assert refused.status_code == 503, target
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["type"] == "/problems/too-many-streams"
    assert server.get("/api/v2/jobs").status_code == 200  # reads are not streams
    first.close()
    wait_for_scrape(server, lambda s: s.value("sessions_streams_open", kind="collection") == 0, what="closed")
    again = watch(server, "/api/v2/jobs?watch=true")
    assert again.wait_status() == 200
    assert scrape(server).value("sessions_streams_rejected_total") == 2


def test_a_client_that_stops_reading_is_let_go(sessions_dir: Path, serve: Serve) -> None:
    """It reads nothing while events (and bookmarks, every 0.2 s) keep coming: once its buffers
    are full the server lets it go within SESSIONS_KEEPALIVE_S, heartbeats notwithstanding."""
    server = serve(sessions_dir, env={"SESSIONS_KEEPALIVE_S": "2", "SESSIONS_BOOKMARK_S": "0.2"})
    with contextlib.closing(open_raw_stream(server.base_url, "/api/v2/jobs?watch=true", receive_buffer=4096)) as sock:
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        for n in range(8):  # 800 kB of events: the socket's buffers fill
            put_session(sessions_dir, f"big-{n}", user_id="u" * 100_000)
        wait_for_scrape(
            server,
            lambda s: s.value("sessions_streams_open", kind="collection") == 0,
            timeout=30,  # 2 s without progress, a 1 s sweep, and a loaded machine
            what="the stalled stream to be let go",
        )
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(1 << 20):  # what was in flight, then the end: the server closed it
                pass


def test_a_slow_but_reading_client_is_not_cut_off(sessions_dir: Path, serve: Serve, watch: Open) -> None:
    server = serve(sessions_dir, env={"SESSIONS_KEEPALIVE_S": "1", "SESSIONS_BOOKMARK_S": "0.2"})
    stream = watch(server, "/api/v2/jobs?watch=true")
    stream.wait(lambda s: sum(event["type"] == "BOOKMARK" for event in s.events) >= 15, timeout=30, what="3 s of it")
    assert not stream.ended


def test_idle_streams_cost_no_thread_and_little_memory(sessions_dir: Path, serve: Serve) -> None:
    """The real figure (10,000 streams, RSS per stream) is in `make bench`; this guards against
    a thread, or a large buffer, per stream."""
    put_session(sessions_dir, "j")
    server = serve(sessions_dir, env={"SESSIONS_BOOKMARK_S": "60"})
    before = wait_quiet_figures(server.process.pid)
    sockets: list[socket.socket] = []
    try:
        for n in range(300):
            target = "/api/v2/jobs?watch=true&status=running" if n % 2 else "/api/v2/jobs/j?watch=true"
            sockets.append(open_raw_stream(server.base_url, target))
        for sock in sockets:
            assert read_head(sock).startswith(b"HTTP/1.1 200")
        wait_for_scrape(
            server,
            lambda s: (
                s.value("sessions_streams_open", kind="job") + s.value("sessions_streams_open", kind="collection")
                == 300
            ),
            what="300 open streams",
        )
        after = process_figures(server.process.pid)
        # At most the loader's pool (4 threads, started on demand), which builds initial states.
        assert after["threads"] <= before["threads"] + LOADER_THREADS
        per_stream = (after["rss"] - before["rss"]) / 300
        assert per_stream < 100_000, f"{per_stream:.0f} bytes of RSS per idle stream"
    finally:
        for sock in sockets:
            sock.close()
    wait_for_scrape(server, lambda s: s.value("sessions_streams_open", kind="job") == 0, what="all closed")


def test_stream_metrics(sessions_dir: Path, serve: Serve, watch: Open) -> None:
    server = serve(sessions_dir, env={"SESSIONS_BOOKMARK_S": "0.3"})
    collection = watch(server, "/api/v2/jobs?watch=true")
    job = watch(server, "/api/v2/jobs/j?watch=true")
    collection.wait_for(lambda event: event.get("initial_events_end", False))
    job.wait_status()
    put_session(sessions_dir, "j")
    collection.wait_for(lambda event: event["type"] == "ADDED")
    job.wait_for(lambda event: event["type"] == "ADDED")
    scraped = wait_for_scrape(
        server,
        lambda s: (
            s.value("sessions_streams_open", kind="collection") == 1
            and s.value("sessions_streams_open", kind="job") == 1
            and s.value("sessions_stream_events_total", kind="job", type="ADDED") == 1
            and s.value("sessions_stream_events_total", kind="collection", type="ADDED") == 1
            and s.value("sessions_stream_event_lag_seconds_count") >= 1
        ),
        what="the streams and their events counted",
    )
    assert scraped.value("sessions_streams_limit") == 10_000
    assert scraped.value("sessions_stream_events_total", kind="collection", type="BOOKMARK") >= 1
    lag_sum = scraped.value("sessions_stream_event_lag_seconds_sum")
    assert 0 <= lag_sum < 60
    job.close()
    wait_for_scrape(
        server,
        lambda s: (
            s.value("sessions_streams_ended_total", kind="job", reason="client") == 1
            and s.value("sessions_streams_open", kind="job") == 0
        ),
        what="the job stream counted as ended by its client",
    )
    routes = scrape(server).label_values("route")
    assert "/api/v2/jobs/{job_id}?watch" in routes


def test_watches_need_the_token(sessions_dir: Path, serve: Serve, watch: Open) -> None:
    server = serve(sessions_dir, env={"SESSIONS_API_TOKEN": "t0ken"})
    for target in ("/api/v2/jobs?watch=true", "/api/v2/jobs/j?watch=true"):
        assert server.get(target).status_code == 401
        assert server.get(target, headers={"Authorization": "Bearer nope"}).status_code == 401
    stream = watch(server, "/api/v2/jobs?watch=true", headers={"Authorization": "Bearer t0ken"})
    assert stream.wait_status() == 200


def test_bookmarks_are_not_sent_to_a_busy_stream(sessions_dir: Path, serve: Serve, watch: Open) -> None:
    """A bookmark is for a stream idle SESSIONS_BOOKMARK_S: a stream with events gets none."""
    server = serve(sessions_dir, env={"SESSIONS_BOOKMARK_S": "2"})
    stream = watch(server, "/api/v2/jobs?watch=true")
    stream.wait_for(lambda event: event.get("initial_events_end", False))
    deadline = time.monotonic() + 3
    n = 0
    while time.monotonic() < deadline:  # a change every ~0.2 s for 3 s
        put_session(sessions_dir, "busy", step=n)
        n += 1
        wait_until(lambda n=n: len(stream.changes()) >= n, what=f"change {n}")
        time.sleep(0.2)  # pacing the writer, not waiting for a result
    assert [event for event in stream.events[1:] if event["type"] == "BOOKMARK"] == []
