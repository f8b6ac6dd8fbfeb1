"""The callers' library across failures of the service: a replica restarted on the same port
and folder (SIGTERM, and SIGKILL), and a caller moved from one replica to another by a load
balancer (a TCP forwarder here; the HAProxy suite does it for real). Each time the mirror's
revision names a history that is gone: a 410, a relist, and callbacks for exactly what changed
meanwhile; job watches resume by ETag with nothing repeated; mirrors end equal to the folder."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from sessions_client import AsyncMirror, AsyncSessionsClient, EventType, JobEvent, Mirror, SessionsClient

from tests.support import Server, eventually, listed, put_session, wait_until
from tests.support.client import FAST_BACKOFF, Consumer, Forwarder, Recorder, as_items
from tests.support.ops import JOB_ROUTE, scrape

Serve = Callable[..., Server]
FAST = {"SESSIONS_BOOKMARK_S": "0.5"}
WATCH_ROUTE = "/api/v2/jobs?watch"


def port_of(server: Server) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def change_while_away(sessions_dir: Path) -> list[tuple[str, str, object]]:
    """What a caller cannot see while its replica is away; the callbacks it must then get."""
    (sessions_dir / "gone.json").unlink()
    put_session(sessions_dir, "change", status="failed")
    put_session(sessions_dir, "new", status="pending")
    return [("added", "new", "pending"), ("deleted", "gone", "running"), ("modified", "change", ("running", "failed"))]


def seed(sessions_dir: Path) -> None:
    for job_id in ("keep", "change", "gone"):
        put_session(sessions_dir, job_id, status="running")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_replica_restarted_on_the_same_port(
    sessions_dir: Path, serve: Serve, stack: contextlib.ExitStack, sig: signal.Signals
) -> None:
    seed(sessions_dir)
    first = serve(sessions_dir, env=FAST)
    sessions = stack.enter_context(SessionsClient(first.base_url, backoff=FAST_BACKOFF))
    recorder = Recorder()
    mirror = stack.enter_context(Mirror(sessions, **recorder.callbacks()))
    job: Consumer[JobEvent] = stack.enter_context(Consumer(lambda stop: sessions.watch_job("keep", stop=stop)))
    assert mirror.wait_synced(30)
    job.wait(lambda events: events, what="keep's current version")
    mark = recorder.mark()

    status = first.stop(sig)
    assert status == (0 if sig is signal.SIGTERM else -signal.SIGKILL)
    expected = change_while_away(sessions_dir)
    second = serve(sessions_dir, env=FAST, port=port_of(first))  # same port, same folder, a new history

    wait_until(lambda: len(recorder.since(mark)) >= 3, timeout=30, what="the relist's callbacks")
    wait_until(lambda: as_items(mirror.snapshot()) == listed(second), timeout=30, what="the mirror equal to the list")
    assert sorted(recorder.since(mark)) == expected  # nothing for "keep", which did not change
    assert mirror.lists == 2 and mirror.reflector is not None and mirror.reflector.relists >= 1
    assert scrape(second).value("sessions_http_requests_total", route=WATCH_ROUTE, method="GET", status="410") >= 1

    put_session(sessions_dir, "keep", status="completed")  # the job watch resumed by ETag: no repeat
    job.wait(lambda events: len(events) >= 2, what="keep's next version")
    assert [(event.type, event.session.status if event.session else None) for event in job.events] == [
        (EventType.ADDED, "running"),
        (EventType.MODIFIED, "completed"),
    ]


def test_a_caller_moved_to_another_replica(sessions_dir: Path, serve: Serve, stack: contextlib.ExitStack) -> None:
    """Two replicas over one folder behind a forwarder that moves every connection from one to
    the other: the collection's revision is the first replica's, a 410 on the second, so the
    mirror lists again; ETags are the same on both, so the job watch and the GET cache carry on."""
    seed(sessions_dir)
    one, two = serve(sessions_dir, env=FAST), serve(sessions_dir, env=FAST)
    balancer = Forwarder(port_of(one))
    stack.callback(balancer.close)
    sessions = stack.enter_context(SessionsClient(balancer.base_url, backoff=FAST_BACKOFF))
    recorder = Recorder()
    mirror = stack.enter_context(Mirror(sessions, **recorder.callbacks()))
    job: Consumer[JobEvent] = stack.enter_context(Consumer(lambda stop: sessions.watch_job("keep", stop=stop)))
    assert mirror.wait_synced(30)
    job.wait(lambda events: events, what="keep's current version")
    cached = sessions.get("keep")
    mark = recorder.mark()

    balancer.switch(port_of(two))
    expected = change_while_away(sessions_dir)
    wait_until(lambda: len(recorder.since(mark)) >= 3, timeout=30, what="the callbacks")
    wait_until(lambda: as_items(mirror.snapshot()) == listed(two), timeout=30, what="the mirror equal to the list")
    assert sorted(recorder.since(mark)) == expected
    assert scrape(two).value("sessions_http_requests_total", route=WATCH_ROUTE, method="GET", status="410") >= 1
    assert sessions.get("keep") is cached  # the first replica's ETag, a 304 from the second
    assert scrape(two).value("sessions_http_requests_total", route=JOB_ROUTE, method="GET", status="304") == 1

    put_session(sessions_dir, "keep", status="completed")
    job.wait(lambda events: len(events) >= 2, what="keep's next version")
    assert [event.type for event in job.events] == [EventType.ADDED, EventType.MODIFIED]
    assert balancer.connections >= 4


def test_the_async_mirror_across_a_restart(sessions_dir: Path, serve: Serve) -> None:
    seed(sessions_dir)
    first = serve(sessions_dir, env=FAST)
    recorder = Recorder()
    servers: list[Server] = []

    async def scenario() -> None:
        async with (
            AsyncSessionsClient(first.base_url, backoff=FAST_BACKOFF) as sessions,
            AsyncMirror(sessions, **recorder.callbacks()) as mirror,
        ):
            assert await mirror.wait_synced(30)
            mark = recorder.mark()
            await asyncio.to_thread(first.stop, signal.SIGKILL)
            expected = change_while_away(sessions_dir)
            second = await asyncio.to_thread(serve, sessions_dir, env=FAST, port=port_of(first))
            servers.append(second)
            await eventually(lambda: len(recorder.since(mark)) >= 3, 30, "the relist's callbacks")
            await eventually(lambda: as_items(mirror.snapshot()) == listed(second), 30, "the mirror equal")
            assert sorted(recorder.since(mark)) == expected and mirror.lists == 2

    asyncio.run(scenario())
    assert servers
