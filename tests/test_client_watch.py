"""The callers' library's watches against the real server and watcher: `watch` and `Mirror`
converging after creates, rewrites and deletes with the right callbacks; resuming after the
server ends its streams with no event missed or repeated; listing again on a 410, whether a
status (a revision older than SESSIONS_HISTORY) or an ERROR event (a consumer that fell
behind); a 503 at the stream limit, then success; the token; job watches; the async mirror.
Failover across restarts and replicas: test_client_failover."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sessions_client import (
    AsyncMirror,
    AsyncSessionsClient,
    EventType,
    JobEvent,
    Mirror,
    SessionsClient,
    Summary,
    Unauthorized,
    WatchEvent,
)

from tests.support import Server, eventually, listed, put_session, wait_until, write_in_place
from tests.support.client import FAST_BACKOFF, Consumer, Recorder, as_items
from tests.support.ops import scrape, wait_for_scrape
from tests.support.watch import open_raw_stream, read_head

Serve = Callable[..., Server]
FAST = {"SESSIONS_BOOKMARK_S": "0.5"}
WATCH_ROUTE = "/api/v2/jobs?watch"


def client(stack: contextlib.ExitStack, server: Server | str, **kwargs: Any) -> SessionsClient:
    kwargs.setdefault("backoff", FAST_BACKOFF)
    url = server if isinstance(server, str) else server.base_url
    return stack.enter_context(SessionsClient(url, **kwargs))


def changes(events: list[WatchEvent]) -> list[tuple[str, str | None]]:
    return [(event.type.value, event.job_id) for event in events if event.type is not EventType.BOOKMARK]


def apply(events: list[WatchEvent]) -> dict[str, dict[str, Any]]:
    state: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.object is None:
            continue
        if event.type is EventType.DELETED:
            state.pop(event.object.job_id, None)
        else:
            state[event.object.job_id] = dict(event.object.data)
    return state


def served(server: Server, job_id: str, status: str | None) -> None:
    """Until the server serves `status` for the job (None: deleted): each step its own revision."""

    def done() -> bool:
        response = server.get(f"/api/v2/jobs/{job_id}")
        return response.status_code == 404 if status is None else response.json().get("status") == status

    wait_until(done, what=f"{job_id} {status}")


def test_a_mirror_converges_and_calls_back(sessions_dir: Path, serve: Serve, stack: contextlib.ExitStack) -> None:
    put_session(sessions_dir, "a", status="running", updated_at="2024-05-01T12:00:03Z")
    put_session(sessions_dir, "b", status="running", updated_at="2024-05-01T12:00:02Z")
    put_session(sessions_dir, "c", status="completed", updated_at="2024-05-01T12:00:01Z")
    server = serve(sessions_dir, env=FAST)
    sessions = client(stack, server)
    everything, unfinished = Recorder(), Recorder()
    mirror = stack.enter_context(Mirror(sessions, **everything.callbacks()))
    active = stack.enter_context(Mirror(sessions, include_saved=False, **unfinished.callbacks()))
    assert mirror.wait_synced(30) and active.wait_synced(30)
    assert as_items(mirror.snapshot()) == listed(server) and set(active.snapshot()) == {"a", "b"}
    assert everything.calls == [("added", "a", "running"), ("added", "b", "running"), ("added", "c", "completed")]
    assert mirror.lists == 1 and mirror.revision == server.get("/api/v2/jobs").headers["x-revision"]

    put_session(sessions_dir, "d", status="pending")  # created
    put_session(sessions_dir, "a", status="pending_hitl")  # rewritten
    (sessions_dir / "b.json").unlink()  # deleted
    write_in_place(sessions_dir / "c.json", b"{torn")  # stale: nothing served changes
    put_session(sessions_dir, "marker", status="completed")
    wait_until(lambda: len(everything.calls) >= 7, what="four more callbacks")
    assert sorted(everything.since(3)) == [
        ("added", "d", "pending"),
        ("added", "marker", "completed"),
        ("deleted", "b", "running"),
        ("modified", "a", ("running", "pending_hitl")),
    ]
    wait_until(lambda: len(unfinished.calls) >= 5, what="the unfinished mirror's callbacks")
    put_session(sessions_dir, "a", status="completed")  # stops matching the unfinished mirror
    wait_until(lambda: len(unfinished.calls) >= 6, what="a to leave the unfinished mirror")
    assert "a" not in active
    assert sorted(unfinished.since(2)) == [
        ("added", "d", "pending"),
        ("deleted", "a", "pending_hitl"),  # its last matching summary
        ("deleted", "b", "running"),
        ("modified", "a", ("running", "pending_hitl")),
    ]
    wait_until(lambda: as_items(mirror.snapshot()) == listed(server), what="the mirror equal to the list")
    assert as_items(active.snapshot()) == listed(server, "&include_saved=false")
    assert mirror.get("a") is not None and mirror.get("a").status == "completed"  # type: ignore[union-attr]
    assert "b" not in mirror and len(mirror) == 4
    mirror.stop()
    assert not mirror.running


def test_resuming_after_the_server_ends_streams_misses_and_repeats_nothing(
    sessions_dir: Path, serve: Serve, stack: contextlib.ExitStack
) -> None:
    """Streams end every 0.5 to 1 s (SESSIONS_STREAM_TIMEOUT_S): the watch resumes from its last
    revision each time, between the rounds of changes, and its events are exactly the changes."""
    server = serve(sessions_dir, env={"SESSIONS_STREAM_TIMEOUT_S": "0.5", "SESSIONS_BOOKMARK_S": "0.2"})
    sessions = client(stack, server)
    watch = stack.enter_context(Consumer(lambda stop: sessions.watch(bookmarks=True, stop=stop)))
    watch.wait(lambda events: any(event.synced for event in events), what="the initial state")
    expected: list[tuple[str, str]] = []
    alive: list[str] = []

    def timeouts() -> float:
        return scrape(server).value("sessions_streams_ended_total", kind="collection", reason="timeout")

    for round_ in range(6):
        ended = timeouts()
        for n in range(2):
            job_id = f"r{round_}-{n}"
            put_session(sessions_dir, job_id, status="running")
            served(server, job_id, "running")
            expected.append(("ADDED", job_id))
            alive.append(job_id)
        put_session(sessions_dir, alive[0], status="pending_hitl" if round_ % 2 else "running", step=round_)
        wait_until(lambda job=alive[0], r=round_: server.get(f"/api/v2/jobs/{job}").json().get("step") == r)
        expected.append(("MODIFIED", alive[0]))
        gone = alive.pop(1)
        (sessions_dir / f"{gone}.json").unlink()
        served(server, gone, None)
        expected.append(("DELETED", gone))
        # The next round after the stream in use has ended at least once more.
        wait_until(lambda ended=ended: timeouts() > ended, timeout=30, what="a stream to end")
    watch.wait(lambda events: len(changes(events)) >= len(expected), what="every change")
    watch.wait(lambda events: events[-1].type is EventType.BOOKMARK, what="a bookmark after the last change")
    assert changes(watch.events) == expected
    assert sum(event.synced for event in watch.events) == 1  # never a relist
    assert apply(watch.events) == listed(server)
    assert scrape(server).value("sessions_http_requests_total", route=WATCH_ROUTE, method="GET", status="410") == 0


def test_since_an_expired_list_relists_and_sends_the_difference(
    sessions_dir: Path, serve: Serve, stack: contextlib.ExitStack
) -> None:
    """A list's revision older than SESSIONS_HISTORY: the watch from it is a 410, the library
    starts again with an initial state and sends only what changed since the list."""
    for job_id in ("keep", "change", "gone"):
        put_session(sessions_dir, job_id, status="running")
    server = serve(sessions_dir, env={"SESSIONS_HISTORY": "3", **FAST})
    sessions = client(stack, server)
    before = sessions.list()
    assert before.revision is not None
    for n in range(4):
        put_session(sessions_dir, f"new-{n}")
        served(server, f"new-{n}", "running")
    put_session(sessions_dir, "change", status="failed")
    (sessions_dir / "gone.json").unlink()
    served(server, "gone", None)
    events = sessions.watch(since=before, bookmarks=True)
    try:
        received = []
        for event in events:
            received.append(event)
            if event.synced:
                break
    finally:
        events.close()
    assert sorted(changes(received)) == [
        ("ADDED", "new-0"),
        ("ADDED", "new-1"),
        ("ADDED", "new-2"),
        ("ADDED", "new-3"),
        ("DELETED", "gone"),
        ("MODIFIED", "change"),
    ]
    modified = next(event for event in received if event.type is EventType.MODIFIED)
    assert modified.old is not None and (modified.old.status, modified.object.status) == ("running", "failed")  # type: ignore[union-attr]
    assert scrape(server).value("sessions_http_requests_total", route=WATCH_ROUTE, method="GET", status="410") == 1


class FirstSmall(httpx.BaseTransport):
    """httpx's own transport, with a 4 kB receive buffer for the first connection: the server's
    buffer for that stream overflows soon. `widen` then gives that connection a large buffer
    again, so that what the kernels hold for it (megabytes) comes at loopback speed rather
    than 4 kB per delayed ACK (minutes); later connections (the relist) have the usual one."""

    def __init__(self) -> None:
        self.small = httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)])
        self.normal = httpx.HTTPTransport()
        self.requests = 0
        self.first: socket.socket | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.requests > 1:
            return self.normal.handle_request(request)
        response = self.small.handle_request(request)
        stream = response.extensions.get("network_stream")
        self.first = stream.get_extra_info("socket") if stream is not None else None
        return response

    def widen(self) -> None:
        assert self.first is not None
        self.first.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        # Linux clamped the advertised window to the small buffer: lift the clamp too.
        self.first.setsockopt(socket.IPPROTO_TCP, socket.TCP_WINDOW_CLAMP, 4 * 1024 * 1024)

    def close(self) -> None:
        self.small.close()
        self.normal.close()


def test_a_consumer_that_falls_behind_gets_an_error_event_and_relists(
    sessions_dir: Path, serve: Serve, stack: contextlib.ExitStack
) -> None:
    """The caller stops reading (a slow loop body) while 12 MB of large summaries change: the
    server's buffer for the stream overflows, it sends an ERROR with a 410 problem and ends the
    stream; the library lists again, and its events still add up to the service's state. (A
    4 kB receive buffer on the first stream while it stalls makes the overflow come soon.)"""
    server = serve(sessions_dir, env={"SESSIONS_KEEPALIVE_S": "60", "SESSIONS_BOOKMARK_S": "30"})
    transport = FirstSmall()
    http = stack.enter_context(httpx.Client(transport=transport, timeout=httpx.Timeout(10, read=60)))
    sessions = client(stack, server, http=http)
    events = sessions.watch(bookmarks=True)
    stack.callback(events.close)
    received = []
    for event in events:
        received.append(event)
        if event.synced:
            break
    big_user = "u" * 200_000
    for n in range(60):
        put_session(sessions_dir, f"big-{n}", user_id=big_user)
    wait_for_scrape(  # the stream's buffer overflowed: its ERROR is queued behind what it had
        server,
        lambda s: s.value("sessions_stream_events_total", kind="collection", type="ERROR") == 1,
        timeout=60,
        what="the stream to fall behind",
    )
    transport.widen()
    for event in events:  # reading again: what was sent, the ERROR, then a fresh initial state
        received.append(event)
        if event.synced:
            break
    assert sum(event.synced for event in received) == 2
    wait_for_scrape(
        server,
        lambda s: s.value("sessions_streams_ended_total", kind="collection", reason="slow") == 1,
        what="the first stream counted as ended for being slow",
    )
    wait_until(lambda: len(listed(server)) == 60, what="every session served")
    for _ in range(200):  # until every change still on its way is in (a bound, not a sleep)
        if apply(received) == listed(server):
            break
        received.append(next(events))
    assert apply(received) == listed(server)
    assert len({event.job_id for event in received if event.type is EventType.ADDED}) == 60


def test_past_the_stream_limit_watches_and_waits_retry_until_they_get_in(
    sessions_dir: Path, serve: Serve, stack: contextlib.ExitStack
) -> None:
    put_session(sessions_dir, "j", status="running")
    server = serve(sessions_dir, env={"SESSIONS_MAX_STREAMS": "1", **FAST})
    sessions = client(stack, server)
    holder = stack.enter_context(contextlib.closing(open_raw_stream(server.base_url, "/api/v2/jobs?watch=true")))
    assert read_head(holder).startswith(b"HTTP/1.1 200")
    mirror = stack.enter_context(Mirror(sessions))
    wait_for_scrape(server, lambda s: s.value("sessions_streams_rejected_total") >= 2, timeout=30, what="503s, retried")
    assert not mirror.synced.is_set() and mirror.running and mirror.error is None
    holder.close()  # a slot frees up: the next retry (after Retry-After: 1) gets in
    assert mirror.wait_synced(30)
    assert as_items(mirror.snapshot()) == listed(server)
    put_session(sessions_dir, "j", status="failed")
    wait_until(lambda: (mirror.get("j") or Summary("", None, None, None, None, {})).status == "failed")
    # A long poll at the limit (the mirror holds the one slot) is refused and retried too.
    rejected = scrape(server).value("sessions_streams_rejected_total")

    def free_the_slot_then_finish() -> None:
        wait_for_scrape(server, lambda s: s.value("sessions_streams_rejected_total") > rejected, what="a 503 wait")
        mirror.stop()
        wait_for_scrape(server, lambda s: s.value("sessions_streams_open", kind="wait") == 1, what="the wait in")
        put_session(sessions_dir, "j", status="completed")

    writer = threading.Thread(target=free_the_slot_then_finish, daemon=True)
    writer.start()
    try:
        assert sessions.wait("j", "completed", timeout=60).status == "completed"
    finally:
        writer.join(30)
    assert not writer.is_alive() and not mirror.running


def test_mirrors_need_the_token(sessions_dir: Path, serve: Serve, stack: contextlib.ExitStack) -> None:
    put_session(sessions_dir, "j")
    server = serve(sessions_dir, env={"SESSIONS_API_TOKEN": "t0ken", **FAST})
    anonymous = stack.enter_context(Mirror(client(stack, server)))
    with pytest.raises(Unauthorized):
        anonymous.wait_synced(30)
    wait_until(lambda: not anonymous.running, what="the refused mirror to stop")
    assert isinstance(anonymous.error, Unauthorized)
    mirror = stack.enter_context(Mirror(client(stack, server, token="t0ken")))
    assert mirror.wait_synced(30) and set(mirror.snapshot()) == {"j"}


def test_a_job_watch_follows_versions_and_resumes_by_etag(
    sessions_dir: Path, serve: Serve, stack: contextlib.ExitStack
) -> None:
    put_session(sessions_dir, "j", status="running")
    server = serve(sessions_dir, env={"SESSIONS_STREAM_TIMEOUT_S": "0.5", "SESSIONS_BOOKMARK_S": "0.2"})
    sessions = client(stack, server)
    watch: Consumer[JobEvent] = stack.enter_context(Consumer(lambda stop: sessions.watch_job("j", stop=stop)))
    steps = [("pending_hitl", "MODIFIED"), ("completed", "MODIFIED"), (None, "DELETED"), ("running", "ADDED")]
    watch.wait(lambda events: len(events) == 1, what="the current version")
    for status, _ in steps:
        ended = scrape(server).value("sessions_streams_ended_total", kind="job", reason="timeout")
        if status is None:
            (sessions_dir / "j.json").unlink()
        else:
            put_session(sessions_dir, "j", status=status)
        served(server, "j", status)
        wait_for_scrape(
            server,
            lambda s, ended=ended: s.value("sessions_streams_ended_total", kind="job", reason="timeout") > ended,
            timeout=30,
            what="the job stream to end and resume",
        )
    watch.wait(lambda events: len(events) >= 5, what="every version")
    assert [(event.type.value, event.session.status if event.session else None) for event in watch.events] == [
        ("ADDED", "running"),
        ("MODIFIED", "pending_hitl"),
        ("MODIFIED", "completed"),
        ("DELETED", "completed"),  # its last version
        ("ADDED", "running"),
    ]
    assert watch.events[-1].session.etag == server.get("/api/v2/jobs/j").headers["etag"]  # type: ignore[union-attr]
    # From a version the caller has (a GET): nothing until the next one.
    current = sessions.get("j")
    later = stack.enter_context(Consumer(lambda stop: sessions.watch_job("j", since=current, stop=stop)))
    put_session(sessions_dir, "j", status="cancelled")
    later.wait(lambda events: events, what="the next version")
    assert [(event.type, event.old) for event in later.events] == [(EventType.MODIFIED, current)]


def test_the_async_mirror(sessions_dir: Path, serve: Serve) -> None:
    for job_id in ("a", "b"):
        put_session(sessions_dir, job_id, status="running")
    server = serve(sessions_dir, env={"SESSIONS_STREAM_TIMEOUT_S": "0.5", **FAST})
    recorder = Recorder()
    awaited: list[str] = []

    async def on_added(summary: Summary) -> None:  # a coroutine callback is awaited, in order
        await asyncio.sleep(0)
        awaited.append(summary.job_id)
        recorder.added(summary)

    async def scenario() -> None:
        async with (
            AsyncSessionsClient(server.base_url, backoff=FAST_BACKOFF) as sessions,
            AsyncMirror(
                sessions, on_added=on_added, on_modified=recorder.modified, on_deleted=recorder.deleted
            ) as mirror,
        ):
            assert await mirror.wait_synced(30)
            assert as_items(mirror.snapshot()) == listed(server)
            put_session(sessions_dir, "c", status="pending")
            put_session(sessions_dir, "a", status="completed")
            (sessions_dir / "b.json").unlink()
            await eventually(lambda: len(recorder.calls) >= 5, 30, "three more callbacks")
            await eventually(lambda: as_items(mirror.snapshot()) == listed(server), 30, "the mirror equal")
            # The watch's first bookmark says it is open (an async generator sends its request
            # at the first `anext`): what follows is news. Each wait is bounded.
            async with contextlib.aclosing(sessions.watch(initial_events=False, bookmarks=True)) as events:
                opened = await asyncio.wait_for(anext(events), 30)
                assert opened.type is EventType.BOOKMARK
                put_session(sessions_dir, "d")
                first = await asyncio.wait_for(anext(events), 30)
                while first.type is EventType.BOOKMARK:
                    first = await asyncio.wait_for(anext(events), 30)
                assert (first.type, first.job_id) == (EventType.ADDED, "d")  # only changes from now on
            assert mirror.running
        assert not mirror.running

    asyncio.run(scenario())
    # (and "d" too, if the mirror heard of it before it stopped)
    assert sorted(call for call in recorder.since(2) if call[1] != "d") == [
        ("added", "c", "pending"),
        ("deleted", "b", "running"),
        ("modified", "a", ("running", "completed")),
    ]
    assert awaited[:2] == ["a", "b"] and "c" in awaited


def test_stopping_is_immediate_even_between_bookmarks(
    sessions_dir: Path, serve: Serve, stack: contextlib.ExitStack
) -> None:
    """An idle stream gets a bookmark every SESSIONS_BOOKMARK_S (60 s here): a Stop shuts the
    socket of the read in progress, so a mirror or a watch stops at once, its thread joined."""
    put_session(sessions_dir, "j")
    server = serve(sessions_dir, env={"SESSIONS_BOOKMARK_S": "60"})
    sessions = client(stack, server)
    mirror = Mirror(sessions).start()
    watch: Consumer[JobEvent] = Consumer(lambda stop: sessions.watch_job("j", stop=stop))
    assert mirror.wait_synced(30)
    watch.wait(lambda events: events, what="the current version")
    started = time.monotonic()
    mirror.stop()
    watch.close()
    assert time.monotonic() - started < 5 and not mirror.running
    wait_for_scrape(
        server,
        lambda s: (
            s.value("sessions_streams_open", kind="collection") + s.value("sessions_streams_open", kind="job") == 0
        ),
        what="both streams closed on the server",
    )
