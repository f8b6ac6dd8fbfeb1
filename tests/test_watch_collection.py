"""GET /api/v2/jobs?watch=true (docs/contract.md#collection-watch), through the real server and the real watcher: the
initial state, every change in revision order, resuming by revision and Last-Event-ID, filter
transitions, both formats, and every bad parameter."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.support import Server, put_session, start_server, wait_until, write_in_place
from tests.support.watch import Watch, mirror, open_raw_stream, read_head

FAST = {"SESSIONS_BOOKMARK_S": "0.5"}
Open = Callable[..., Watch]
Serve = Callable[..., Server]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real server over four sessions that nothing changes: for the tests that only read."""
    folder = tmp_path_factory.mktemp("sessions")
    put_session(folder, "r1", status="running", user_id="ann")
    put_session(folder, "r2", status="running", user_id="bob")
    put_session(folder, "h", status="pending_hitl", user_id="bob")
    put_session(folder, "done", status="completed", user_id="ann")
    server = start_server(folder, tmp_path_factory.mktemp("logs"), env=FAST)
    yield server
    server.stop()


def list_revision(server: Server, query: str = "") -> tuple[dict[str, dict[str, object]], str]:
    response = server.get(f"/api/v2/jobs?limit=1000{query}")
    assert response.status_code == 200
    return {item["job_id"]: item for item in response.json()}, response.headers["x-revision"]


def test_initial_state_then_every_change(sessions_dir: Path, serve: Serve, watch: Open) -> None:
    for n in range(3):
        put_session(sessions_dir, f"old-{n}", updated_at=f"2024-05-01T12:00:0{n}Z")
    server = serve(sessions_dir, env=FAST)
    listed, _ = list_revision(server)
    stream = watch(server, "/api/v2/jobs?watch=true")
    assert stream.wait_status() == 200
    headers = stream.response_headers
    assert headers is not None
    assert headers["content-type"] == "application/x-ndjson"
    assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"
    end = stream.wait_for(lambda event: event["type"] == "BOOKMARK", what="initial_events_end")
    assert end == {"type": "BOOKMARK", "revision": end["revision"], "initial_events_end": True}
    initial = stream.events[: stream.events.index(end)]
    assert [event["type"] for event in initial] == ["ADDED"] * 3
    assert [event["object"] for event in initial] == list(listed.values())  # list order, list items

    put_session(sessions_dir, "new", status="pending")
    put_session(sessions_dir, "old-0", status="pending_hitl")
    (sessions_dir / "old-1.json").unlink()
    changes = stream.wait(lambda s: len(s.changes()) >= 6 and s.changes()[3:], what="three changes")[:3]
    # One watcher batch is an unordered set: revisions follow the order the store applied them.
    by_id = {event["object"]["job_id"]: event for event in changes}
    assert {job_id: event["type"] for job_id, event in by_id.items()} == {
        "new": "ADDED",
        "old-0": "MODIFIED",
        "old-1": "DELETED",
    }
    assert by_id["old-0"]["object"]["status"] == "pending_hitl"
    assert by_id["old-1"]["object"] == listed["old-1"]  # the last summary of a deleted session
    revisions = [event["revision"] for event in changes]
    assert len(set(revisions)) == 3 and end["revision"] not in revisions
    assert mirror(stream.events) == {item["job_id"]: item for item in server.get("/api/v2/jobs").json()}


def test_a_watch_from_a_list_revision_gets_exactly_what_followed(sessions_dir: Path, serve: Serve, watch: Open) -> None:
    put_session(sessions_dir, "a")
    server = serve(sessions_dir, env=FAST)
    listed, revision = list_revision(server)
    put_session(sessions_dir, "b")  # after the list, before the watch
    wait_until(lambda: server.get("/api/v2/jobs/b").status_code == 200, what="b served")
    stream = watch(server, f"/api/v2/jobs?watch=true&revision={revision}")
    put_session(sessions_dir, "c")
    stream.wait(lambda s: len(s.changes()) >= 2, what="b and c")
    assert [(event["type"], event["object"]["job_id"]) for event in stream.changes()] == [
        ("ADDED", "b"),
        ("ADDED", "c"),
    ]
    assert not any(event.get("initial_events_end") for event in stream.events)
    assert set(mirror(stream.events, "job_id")) | set(listed) == {"a", "b", "c"}


def test_resuming_from_any_event_misses_nothing_and_repeats_nothing(
    sessions_dir: Path, serve: Serve, watch: Open
) -> None:
    server = serve(sessions_dir, env=FAST)
    first = watch(server, "/api/v2/jobs?watch=true")
    first.wait_for(lambda event: event.get("initial_events_end", False))
    for n in range(6):
        put_session(sessions_dir, f"j{n}", status="running" if n % 2 else "completed")
    first.wait(lambda s: len(s.changes()) >= 6, what="six changes")
    changes = first.changes()
    for cut in (0, 2, 5):
        resumed = watch(server, f"/api/v2/jobs?watch=true&revision={changes[cut]['revision']}")
        if cut < 5:
            resumed.wait(lambda s, cut=cut: len(s.changes()) >= 5 - cut, what="the rest")
        resumed.wait(lambda s: any(event["type"] == "BOOKMARK" for event in s.events), what="a bookmark")
        assert resumed.changes() == changes[cut + 1 :]


def test_last_event_id_wins_over_the_url_revision(sessions_dir: Path, serve: Serve, watch: Open) -> None:
    """An EventSource reconnects to the same URL with the last id it saw."""
    server = serve(sessions_dir, env=FAST)
    _, start = list_revision(server)
    put_session(sessions_dir, "a")
    put_session(sessions_dir, "b")
    first = watch(server, f"/api/v2/jobs?watch=true&revision={start}", sse=True)
    first.wait(lambda s: len(s.changes()) >= 2, what="a and b")
    earlier, later = first.changes()  # in the order the store applied them
    resumed = watch(
        server, f"/api/v2/jobs?watch=true&revision={start}", sse=True, headers={"Last-Event-ID": earlier["_id"]}
    )
    resumed.wait(lambda s: s.changes(), what="the later one")
    resumed.wait(lambda s: any(event["type"] == "BOOKMARK" for event in s.events), what="a bookmark")
    assert resumed.changes() == [later]


def test_server_sent_events(sessions_dir: Path, serve: Serve, watch: Open) -> None:
    put_session(sessions_dir, "a")
    server = serve(sessions_dir, env=FAST)
    stream = watch(server, "/api/v2/jobs?watch=true", sse=True)
    assert stream.wait_status() == 200
    assert stream.response_headers is not None
    assert stream.response_headers["content-type"].startswith("text/event-stream")
    end = stream.wait_for(lambda event: event.get("initial_events_end", False))
    added = stream.events[0]
    # No id on the initial state (a reconnect in the middle must start again), then ids.
    assert (added["_event"], added["_id"]) == ("ADDED", None)
    assert (end["_event"], end["_id"]) == ("BOOKMARK", end["revision"])
    put_session(sessions_dir, "b")
    change = stream.wait_for(lambda event: event["type"] == "ADDED" and event["object"]["job_id"] == "b")
    assert change["_id"] == change["revision"] and change["_event"] == "ADDED"
    text = bytes(stream.raw).decode()
    # A jittered retry: first (docs/browsers.md), then the events
    retry, _, events = text.partition("\n\n")
    assert retry.startswith("retry: ") and int(retry.removeprefix("retry: ")) > 0
    assert events.startswith("event: ADDED\ndata: {") and "\n\nid: " in events


@pytest.mark.parametrize(
    ("query", "expect_ids"),
    [
        ("status=running", {"r1", "r2"}),
        ("status=running,pending_hitl", {"r1", "r2", "h"}),
        ("user_id=ann", {"r1", "done"}),
        ("include_saved=false", {"r1", "r2", "h"}),
        ("user_id=ann&include_saved=false", {"r1"}),
    ],
)
def test_filters_as_for_the_list(shared: Server, watch: Open, query: str, expect_ids: set[str]) -> None:
    stream = watch(shared, f"/api/v2/jobs?watch=true&{query}")
    stream.wait_for(lambda event: event.get("initial_events_end", False))
    assert set(mirror(stream.events)) == expect_ids == set(list_revision(shared, f"&{query}")[0])


def test_a_session_that_stops_matching_is_deleted_and_one_that_starts_is_added(
    sessions_dir: Path, serve: Serve, watch: Open
) -> None:
    put_session(sessions_dir, "j", status="running", user_id="ann")
    server = serve(sessions_dir, env=FAST)
    stream = watch(server, "/api/v2/jobs?watch=true&status=running,pending_hitl")
    stream.wait_for(lambda event: event.get("initial_events_end", False))
    for step, status in enumerate(("pending_hitl", "completed", "running"), start=1):
        put_session(sessions_dir, "j", status=status, user_id="ann", updated_at=f"2024-05-01T12:00:0{step}Z")
        # Each version seen by the service before the next (writes close together coalesce).
        wait_until(lambda status=status: server.get("/api/v2/jobs/j").json()["status"] == status, what=status)
    stream.wait(lambda s: len(s.changes()) >= 4, what="four events")
    assert [(event["type"], event["object"]["status"]) for event in stream.changes()] == [
        ("ADDED", "running"),
        ("MODIFIED", "pending_hitl"),
        ("DELETED", "pending_hitl"),  # with its last matching summary
        ("ADDED", "running"),
    ]


def test_what_alters_nothing_served_sends_nothing(sessions_dir: Path, serve: Serve, watch: Open) -> None:
    put_session(sessions_dir, "a")
    server = serve(sessions_dir, env=FAST)
    stream = watch(server, "/api/v2/jobs?watch=true")
    stream.wait_for(lambda event: event.get("initial_events_end", False))
    body = (sessions_dir / "a.json").read_bytes()
    os.utime(sessions_dir / "a.json")  # a touch
    write_in_place(sessions_dir / "a.json", body)  # the same bytes again
    write_in_place(sessions_dir / "never.json", b"{nope")  # never valid
    write_in_place(sessions_dir / "a.json", b"{broken")  # a served session turns stale
    wait_until(lambda: server.get("/api/v2/jobs/a").headers.get("x-session-stale") == "true", what="stale")
    write_in_place(sessions_dir / "a.json", body)  # and back
    wait_until(lambda: "x-session-stale" not in server.get("/api/v2/jobs/a").headers, what="fresh")
    put_session(sessions_dir, "marker")
    stream.wait_for(lambda event: event["type"] == "ADDED" and event["object"]["job_id"] == "marker")
    assert [event["object"]["job_id"] for event in stream.changes()] == ["a", "marker"]


def test_bookmarks_keep_an_idle_stream_alive_with_the_latest_revision(
    sessions_dir: Path, serve: Serve, watch: Open
) -> None:
    server = serve(sessions_dir, env={"SESSIONS_BOOKMARK_S": "0.3"})
    stream = watch(server, "/api/v2/jobs?watch=true")
    stream.wait(lambda s: sum(event["type"] == "BOOKMARK" for event in s.events) >= 3, what="bookmarks")
    put_session(sessions_dir, "a")
    added = stream.wait_for(lambda event: event["type"] == "ADDED")
    later = stream.wait_for(lambda event: event["type"] == "BOOKMARK" and event["revision"] == added["revision"])
    assert later["revision"] == server.get("/api/v2/jobs").headers["x-revision"]


def test_a_stream_ends_cleanly_after_its_lifetime(sessions_dir: Path, serve: Serve, watch: Open) -> None:
    server = serve(sessions_dir, env={"SESSIONS_STREAM_TIMEOUT_S": "1", "SESSIONS_BOOKMARK_S": "5"})
    stream = watch(server, "/api/v2/jobs?watch=true")
    stream.wait_ended(timeout=30)  # between 1 and 2 s; generous for a loaded machine
    assert stream.failure is None  # the chunked response ended properly
    assert stream.events[-1]["type"] == "BOOKMARK"  # a revision to resume from
    assert stream.raw.endswith(b"\n")


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        ("watch=true&limit=10", {}, 400),
        ("watch=true&cursor=abc", {}, 400),
        ("watch=maybe", {}, 400),
        ("watch=", {}, 400),
        ("revision=abc.1", {}, 400),  # a revision without a watch
        ("watch=true&revision=" + "x" * 65, {}, 400),
        ("watch=true&revision=not%20a%20revision", {}, 400),
        ("watch=true", {"Last-Event-ID": "bad id!"}, 400),
        ("watch=true&revision=aaaaaaaaaaaa.1", {}, 410),  # another replica's
        ("watch=true&revision=opaque-token", {}, 410),
        ("watch=true", {"Last-Event-ID": "aaaaaaaaaaaa.3"}, 410),
    ],
)
def test_bad_parameters_are_a_400_and_unknown_revisions_a_410(
    shared: Server, query: str, headers: dict[str, str], status: int
) -> None:
    response = shared.get(f"/api/v2/jobs?{query}", headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["detail"]
    if status == 410:
        assert "list again" in problem["detail"]


def test_a_revision_older_than_the_history_is_a_410(sessions_dir: Path, serve: Serve) -> None:
    server = serve(sessions_dir, env={"SESSIONS_HISTORY": "3"})
    _, old = list_revision(server)
    for n in range(5):
        put_session(sessions_dir, f"j{n}")
    wait_until(lambda: len(list_revision(server)[0]) == 5, what="five sessions")
    assert server.get(f"/api/v2/jobs?watch=true&revision={old}").status_code == 410
    _, recent = list_revision(server)
    with server.client.stream("GET", f"/api/v2/jobs?watch=true&revision={recent}") as response:
        assert response.status_code == 200


def test_a_revision_from_before_a_restart_is_a_410(sessions_dir: Path, serve: Serve) -> None:
    put_session(sessions_dir, "a")
    first = serve(sessions_dir)
    _, revision = list_revision(first)
    assert first.get("/readyz").json()["revision"] == revision
    assert first.stop() == 0
    second = serve(sessions_dir)
    _, now = list_revision(second)
    assert now != revision  # same folder, same count of changes: another history all the same
    assert second.get(f"/api/v2/jobs?watch=true&revision={revision}").status_code == 410


def test_a_stream_that_falls_behind_its_buffer_gets_an_error_and_ends(
    sessions_dir: Path, serve: Serve, watch: Open
) -> None:
    """The client reads nothing while large summaries (a 200 kB user id) change: the socket's
    buffers fill, then the stream's own; it is sent an ERROR event with a 410 problem, and ends.
    (A stalled client would be let go after SESSIONS_KEEPALIVE_S: the test reads again before.)"""
    server = serve(sessions_dir, env={"SESSIONS_KEEPALIVE_S": "60", "SESSIONS_BOOKMARK_S": "30"})
    _, revision = list_revision(server)
    with contextlib.closing(
        open_raw_stream(server.base_url, f"/api/v2/jobs?watch=true&revision={revision}", receive_buffer=4096)
    ) as sock:
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        big_user = "u" * 200_000
        for n in range(60):  # 12 MB of events: more than the socket buffers and the stream's 1 MiB
            put_session(sessions_dir, f"big-{n}", user_id=big_user)
        wait_until(  # the stream's buffer overflowed: its ERROR is queued behind what it had
            lambda: 'sessions_stream_events_total{kind="collection",type="ERROR"} 1.0' in server.get("/metrics").text,
            timeout=30,
            what="the stream to fall behind",
        )
        data = b""
        while not data.endswith(b"0\r\n\r\n"):  # the end of the chunked response
            chunk = sock.recv(65536)
            assert chunk, "the connection closed before the response ended"
            data += chunk
    lines = [line for line in data.split(b"\n") if line.startswith(b"{")]
    error = orjson.loads(lines[-1])
    assert error["type"] == "ERROR" and error["object"]["status"] == 410
    assert error["object"]["type"] == "/problems/stream-fell-behind"
    assert len(lines) < 60  # not every event: it fell behind
    wait_until(
        lambda: 'sessions_streams_ended_total{kind="collection",reason="slow"} 1.0' in server.get("/metrics").text,
        what="the stream counted as ended for being slow",
    )


def test_head_of_a_watch_is_headers_only(shared: Server) -> None:
    response = shared.client.head("/api/v2/jobs?watch=true", headers={"Accept": "text/event-stream"})
    assert response.status_code == 200 and response.content == b""
    assert response.headers["content-type"].startswith("text/event-stream")
