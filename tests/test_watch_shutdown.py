"""SIGTERM with open streams and waiting long polls (docs/contract.md#promises, #stream-limits): they go on during the
shutdown delay, then every stream ends cleanly and every wait answers 304, and the process
exits 0 long before SESSIONS_GRACEFUL_TIMEOUT_S."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.support import Server, put_session, wait_until
from tests.support.ops import wait_for_scrape
from tests.support.watch import Watch, open_raw_stream, read_head
from tests.test_long_poll import Poll, waiting

Open = Callable[..., Watch]
Serve = Callable[..., Server]
GRACEFUL_S = 60  # what a stream must not make the process wait for


def test_streams_end_cleanly_and_waits_answer(sessions_dir: Path, serve: Serve, watch: Open) -> None:
    put_session(sessions_dir, "j")
    server = serve(
        sessions_dir,
        env={
            "SESSIONS_SHUTDOWN_DELAY_S": "1",
            "SESSIONS_GRACEFUL_TIMEOUT_S": str(GRACEFUL_S),
            "SESSIONS_BOOKMARK_S": "30",
        },
    )
    etag = server.get("/api/v2/jobs/j").headers["etag"]
    collection = watch(server, "/api/v2/jobs?watch=true")
    job = watch(server, "/api/v2/jobs/j?watch=true", sse=True)
    polls = [Poll(server, "j", {"If-None-Match": etag, "Prefer": "wait=300"}) for _ in range(2)]
    collection.wait_for(lambda event: event.get("initial_events_end", False))
    job.wait_for(lambda event: event["type"] == "ADDED")
    waiting(server, 2)

    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    wait_until(lambda: server.get("/readyz").status_code == 503, what="draining")
    put_session(sessions_dir, "during-the-delay")  # streams still get changes during the delay
    collection.wait_for(lambda event: event["type"] == "ADDED" and event["object"]["job_id"] == "during-the-delay")

    assert [poll.result().status_code for poll in polls] == [304, 304]
    collection.wait_ended(timeout=30)
    job.wait_ended(timeout=30)
    assert server.process.wait(30) == 0
    elapsed = time.monotonic() - started
    assert elapsed < GRACEFUL_S / 2, f"exit took {elapsed:.1f} s"
    for stream in (collection, job):
        assert stream.failure is None  # the chunked response ended properly
        assert stream.events[-1]["type"] == "BOOKMARK"
        assert stream.raw.endswith(b"\n")
    assert collection.events[-1]["revision"] != collection.events[0]["revision"]


def test_a_stalled_reader_does_not_hold_the_shutdown(sessions_dir: Path, serve: Serve) -> None:
    server = serve(sessions_dir, env={"SESSIONS_GRACEFUL_TIMEOUT_S": str(GRACEFUL_S), "SESSIONS_KEEPALIVE_S": "120"})
    with contextlib.closing(open_raw_stream(server.base_url, "/api/v2/jobs?watch=true", receive_buffer=4096)) as sock:
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        for n in range(10):
            put_session(sessions_dir, f"big-{n}", user_id="u" * 100_000)
        wait_for_scrape(
            server,
            lambda s: s.value("sessions_stream_events_total", kind="collection", type="ADDED") >= 10,
            what="the events to be sent to the stalled reader",
        )
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(GRACEFUL_S) == 0
        assert time.monotonic() - started < GRACEFUL_S / 2
