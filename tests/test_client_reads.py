"""The callers' library's reads against the real server and watcher: `get` with its ETag cache
(304s counted by the server's own metrics), typed problems, the token, `list` across pages,
and `wait` on the long poll (reached, timed out, deleted, capped by SESSIONS_MAX_WAIT_S), in
the sync and the async client."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from sessions_client import (
    AsyncSessionsClient,
    BadRequest,
    NotFound,
    SessionDeleted,
    SessionsClient,
    TransportError,
    Unauthorized,
    WaitTimeout,
)
from sessions_client.polling import assemble

from tests.support import Server, listed, put_session, start_server, wait_until, write_in_place
from tests.support.client import FAST_BACKOFF, Forwarder
from tests.support.ops import JOB_ROUTE, LIST_ROUTE, scrape, wait_for_scrape

Serve = Callable[..., Server]
WAIT_ROUTE = JOB_ROUTE + "?wait"


def requests(server: Server, route: str, status: str) -> float:
    return scrape(server).value("sessions_http_requests_total", route=route, method="GET", status=status)


def waits_open(server: Server, count: int) -> None:
    wait_for_scrape(
        server, lambda s: s.value("sessions_streams_open", kind="wait") == count, what=f"{count} waiting long polls"
    )


class Later:
    """Something a writer does in a thread once a condition holds (a waiter is waiting)."""

    def __init__(self, condition: Callable[[], None], action: Callable[[], None]) -> None:
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(condition, action), daemon=True)
        self._thread.start()

    def _run(self, condition: Callable[[], None], action: Callable[[], None]) -> None:
        try:
            condition()
            action()
        except BaseException as exc:  # noqa: BLE001 (reported by join, in the test's thread)
            self.failure = exc

    def join(self) -> None:
        self._thread.join(30)
        assert not self._thread.is_alive()
        if self.failure is not None:
            raise self.failure


class Shared(NamedTuple):
    server: Server
    folder: Path


# The tests that read only sessions of their own and count nothing on the server share one
# server; the others count requests or waiting polls, or list the whole folder.


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    folder = tmp_path_factory.mktemp("sessions")
    server = start_server(folder, tmp_path_factory.mktemp("logs"))
    yield Shared(server, folder)
    server.stop()


@pytest.fixture
def client_for() -> Iterator[Callable[..., SessionsClient]]:
    clients: list[SessionsClient] = []

    def make(server: Server, **kwargs: object) -> SessionsClient:
        kwargs.setdefault("backoff", FAST_BACKOFF)
        client = SessionsClient(server.base_url, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


# --- get ------------------------------------------------------------------------------------------


def test_get_revalidates_its_cached_version(
    sessions_dir: Path, serve: Serve, client_for: Callable[..., SessionsClient]
) -> None:
    put_session(sessions_dir, "j", status="running", note="first")
    server = serve(sessions_dir)
    client = client_for(server)
    first = client.get("j")
    assert first.document["note"] == "first" and first.status == "running" and not first.stale
    assert first.etag == server.get("/api/v2/jobs/j").headers["etag"]
    assert client.get("j") is first  # a 304: the cached version
    wait_for_scrape(
        server, lambda s: s.value("sessions_http_requests_total", route=JOB_ROUTE, method="GET", status="304") == 1
    )

    put_session(sessions_dir, "j", status="completed")
    wait_until(lambda: server.get("/api/v2/jobs/j").json()["status"] == "completed", what="the new version")
    second = client.get("j")
    assert second.status == "completed" and second.etag != first.etag and second.finished

    write_in_place(sessions_dir / "j.json", b"{torn")
    wait_until(lambda: client.get("j").stale, what="the stale flag, on a 304")
    assert client.get("j").etag == second.etag
    assert requests(server, JOB_ROUTE, "304") >= 3


def test_a_client_without_a_cache_asks_for_the_body_each_time(
    sessions_dir: Path, serve: Serve, client_for: Callable[..., SessionsClient]
) -> None:
    put_session(sessions_dir, "j")
    server = serve(sessions_dir)
    client = client_for(server, cache_size=0)
    assert client.get("j") == client.get("j")
    assert requests(server, JOB_ROUTE, "200") == 2 and requests(server, JOB_ROUTE, "304") == 0


def test_problems_are_typed(shared: Shared, client_for: Callable[..., SessionsClient]) -> None:
    server, sessions_dir = shared
    write_in_place(sessions_dir / "never.json", b"{not json")
    put_session(sessions_dir, "j")
    wait_until(lambda: server.get("/api/v2/jobs/j").status_code == 200, what="j served")
    wait_until(lambda: "invalid" in server.get("/api/v2/jobs/never").json()["type"], what="never seen invalid")
    client = client_for(server)
    with pytest.raises(NotFound) as missing:
        client.get("nope")
    assert missing.value.status == 404 and missing.value.type == "/problems/session-not-found"
    with pytest.raises(NotFound) as invalid:
        client.get("never")
    assert invalid.value.type == "/problems/session-file-invalid" and invalid.value.detail
    with pytest.raises(ValueError):
        client.get("../etc/passwd")
    with pytest.raises(BadRequest) as bad:
        client.list(status=[f"s{n}" for n in range(70)])  # the server takes at most 64
    assert "64" in bad.value.detail
    client.get("j")
    (sessions_dir / "j.json").unlink()
    wait_until(lambda: server.get("/api/v2/jobs/j").status_code == 404, what="the deletion")
    with pytest.raises(NotFound):
        client.get("j")  # the cached version is dropped, not served
    with pytest.raises(TransportError), SessionsClient("http://127.0.0.1:9", timeout=2) as nowhere:
        nowhere.get("j")


def test_reads_are_tried_again_after_a_connection_that_dies(sessions_dir: Path, serve: Serve) -> None:
    """A replica killed mid-request leaves the caller a connection closed without an answer:
    get and each list page try again (twice by default), and fail only when every try did."""
    for job_id in ("a", "b", "c"):
        put_session(sessions_dir, job_id)
    server = serve(sessions_dir)
    front = Forwarder(int(server.base_url.rsplit(":", 1)[1]))
    try:
        # A new client for each case: a kept-alive connection would not meet the refusals.
        with SessionsClient(front.base_url, backoff=FAST_BACKOFF) as client:
            front.refuse(2)
            assert client.get("a").job_id == "a" and front.refused == 2
        with SessionsClient(front.base_url, backoff=FAST_BACKOFF) as client:
            front.refuse(2)
            assert sorted(item.job_id for item in client.list(limit=1)) == ["a", "b", "c"]
            assert front.refused == 4
        with SessionsClient(front.base_url, backoff=FAST_BACKOFF) as client:
            front.refuse(3)
            with pytest.raises(TransportError):
                client.get("a")  # three failures: the first try and both retries
            assert front.refused == 7
        with SessionsClient(front.base_url, backoff=FAST_BACKOFF, retries=0) as client:
            front.refuse(1)
            with pytest.raises(TransportError):
                client.get("a")
            assert client.get("a").job_id == "a" and front.refused == 8

        async def the_async_client() -> None:
            async with AsyncSessionsClient(front.base_url, backoff=FAST_BACKOFF) as client:
                front.refuse(2)
                assert (await client.get("b")).job_id == "b" and front.refused == 10

        asyncio.run(the_async_client())
    finally:
        front.close()


def test_the_token(sessions_dir: Path, serve: Serve, client_for: Callable[..., SessionsClient]) -> None:
    put_session(sessions_dir, "j")
    server = serve(sessions_dir, env={"SESSIONS_API_TOKEN": "t0ken"})
    with pytest.raises(Unauthorized) as refused:
        client_for(server).get("j")
    assert refused.value.status == 401
    with pytest.raises(Unauthorized):
        client_for(server, token="wrong").list()
    client = client_for(server, token="t0ken")
    assert client.get("j").job_id == "j" and [item.job_id for item in client.list()] == ["j"]


# --- list -----------------------------------------------------------------------------------------


def test_list_follows_every_page(sessions_dir: Path, serve: Serve, client_for: Callable[..., SessionsClient]) -> None:
    for n in range(7):
        put_session(
            sessions_dir, f"j{n}", status="completed" if n % 3 == 0 else "running", updated_at=f"2024-05-01T12:00:0{n}Z"
        )
    server = serve(sessions_dir)
    client = client_for(server)
    result = client.list(limit=3)
    assert result.pages == 3 and result.total == 7
    assert [item.job_id for item in result] == list(listed(server))  # newest first, none twice
    assert result.revision == server.get("/api/v2/jobs").headers["x-revision"]  # one state
    assert [dict(item.data) for item in result] == list(listed(server).values())
    running = client.list(status="running", limit=2)
    assert {item.job_id for item in running} == set(listed(server, "&status=running")) and running.pages == 2
    assert len(client.list(include_saved=False)) == 4
    assert requests(server, LIST_ROUTE, "200") >= 3 + 3 + 1


def test_pages_read_while_sessions_change_have_no_revision(
    sessions_dir: Path, serve: Serve, client_for: Callable[..., SessionsClient]
) -> None:
    """Pages of different revisions are no one state: the list says so, and a watch from it
    starts with an initial state and sends only what differs from the list."""
    for n in range(4):
        put_session(sessions_dir, f"j{n}", updated_at=f"2024-05-01T12:00:0{n}Z")
    server = serve(sessions_dir)
    client = client_for(server)
    pages = client.pages(limit=2)
    first = next(pages)
    put_session(sessions_dir, "late", updated_at="2024-01-01T00:00:00Z")  # sorts last: on a later page
    wait_until(lambda: server.get("/api/v2/jobs/late").status_code == 200, what="late served")
    result = assemble(first_filter := client.list(limit=2).filter, [first, *pages])
    assert result.revision is None and "late" in {item.job_id for item in result}
    put_session(sessions_dir, "after")
    wait_until(lambda: server.get("/api/v2/jobs/after").status_code == 200, what="after served")
    events = client.watch(since=result)
    try:
        change = next(events)
    finally:
        events.close()
    assert (change.type, change.job_id) == ("ADDED", "after") and first_filter == result.filter


# --- wait -----------------------------------------------------------------------------------------


def test_wait_returns_the_version_that_reached_the_status(
    sessions_dir: Path, serve: Serve, client_for: Callable[..., SessionsClient]
) -> None:
    put_session(sessions_dir, "j", status="running")
    server = serve(sessions_dir)
    client = client_for(server)

    def steps() -> None:
        for step, status in enumerate(("pending_hitl", "pending_review", "completed")):
            waits_open(server, 1)  # the waiter is on the server, waiting
            put_session(sessions_dir, "j", status=status, updated_at=f"2024-05-01T12:00:0{step}Z")
            if status != "completed":
                wait_for_scrape(
                    server,
                    lambda s, step=step: (
                        s.value("sessions_http_requests_total", route=WAIT_ROUTE, method="GET", status="200")
                        == step + 1
                    ),
                )

    writer = Later(lambda: None, steps)
    started = time.monotonic()
    session = client.wait("j", {"completed", "failed"}, timeout=60)
    writer.join()
    assert session.status == "completed" and session.etag == server.get("/api/v2/jobs/j").headers["etag"]
    assert time.monotonic() - started < 45
    assert requests(server, WAIT_ROUTE, "200") == 3  # one long poll per version, no polling
    assert client.wait("j", "completed", timeout=5) == session  # already there: one GET, a 304


def test_wait_takes_a_predicate(sessions_dir: Path, serve: Serve, client_for: Callable[..., SessionsClient]) -> None:
    put_session(sessions_dir, "j", step=0)
    server = serve(sessions_dir)
    writer = Later(lambda: waits_open(server, 1), lambda: put_session(sessions_dir, "j", step=1))
    session = client_for(server).wait("j", lambda s: s.document.get("step") == 1, timeout=60)
    writer.join()
    assert session.document["step"] == 1


def test_wait_times_out_with_the_last_version(shared: Shared, client_for: Callable[..., SessionsClient]) -> None:
    server, sessions_dir = shared
    put_session(sessions_dir, "still", status="running")
    wait_until(lambda: server.get("/api/v2/jobs/still").status_code == 200, what="still served")
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as late:
        client_for(server).wait("still", "completed", timeout=1.5)
    elapsed = time.monotonic() - started
    assert 1.4 <= elapsed < 10
    assert late.value.session is not None and late.value.session.status == "running"
    assert isinstance(late.value, TimeoutError)


def test_wait_hears_a_deletion_and_a_missing_session(
    sessions_dir: Path, serve: Serve, client_for: Callable[..., SessionsClient]
) -> None:
    put_session(sessions_dir, "j")
    server = serve(sessions_dir)
    client = client_for(server)
    with pytest.raises(NotFound) as missing:
        client.wait("nope", "completed", timeout=5)
    assert not isinstance(missing.value, SessionDeleted)
    writer = Later(lambda: waits_open(server, 1), lambda: (sessions_dir / "j.json").unlink())
    with pytest.raises(SessionDeleted):
        client.wait("j", "completed", timeout=60)
    writer.join()


def test_a_wait_longer_than_the_servers_cap_polls_again(
    sessions_dir: Path, serve: Serve, client_for: Callable[..., SessionsClient]
) -> None:
    put_session(sessions_dir, "j", status="running")
    server = serve(sessions_dir, env={"SESSIONS_MAX_WAIT_S": "1"})
    writer = Later(
        lambda: wait_for_scrape(
            server,
            lambda s: s.value("sessions_http_requests_total", route=WAIT_ROUTE, method="GET", status="304") >= 2,
            timeout=30,
            what="two capped long polls",
        ),
        lambda: put_session(sessions_dir, "j", status="failed"),
    )
    session = client_for(server).wait("j", "failed", timeout=60)
    writer.join()
    assert session.status == "failed"
    # Each capped poll waited its second on the server: a handful of requests, not a spin.
    assert 2 <= requests(server, WAIT_ROUTE, "304") <= 30


# --- async ------------------------------------------------------------------------------------------


def test_the_async_client_reads_lists_and_waits(sessions_dir: Path, serve: Serve) -> None:
    for n in range(5):
        put_session(sessions_dir, f"j{n}", status="running", updated_at=f"2024-05-01T12:00:0{n}Z")
    server = serve(sessions_dir, env={"SESSIONS_API_TOKEN": "t0ken"})

    async def scenario() -> None:
        async with AsyncSessionsClient(server.base_url, token="t0ken", backoff=FAST_BACKOFF) as client:
            first = await client.get("j1")
            assert await client.get("j1") is first
            result = await client.list(limit=2)
            assert [item.job_id for item in result] == ["j4", "j3", "j2", "j1", "j0"] and result.pages == 3
            assert result.revision is not None
            pages = [page async for page in client.pages(limit=4)]
            assert [len(page.items) for page in pages] == [4, 1]
            with pytest.raises(NotFound):
                await client.get("nope")
            with pytest.raises(WaitTimeout):
                await client.wait("j1", "completed", timeout=1.2)

            async def finish() -> None:
                await asyncio.to_thread(waits_open, server, 1)
                put_session(sessions_dir, "j1", status="completed")

            writer = asyncio.create_task(finish())
            session = await client.wait("j1", "completed", timeout=60)
            await writer
            assert session.status == "completed"
        async with AsyncSessionsClient(server.base_url) as anonymous:
            with pytest.raises(Unauthorized):
                await anonymous.get("j1")

    asyncio.run(scenario())
    assert requests(server, JOB_ROUTE, "304") >= 1
