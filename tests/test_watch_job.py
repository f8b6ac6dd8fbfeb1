"""GET /api/v2/jobs/{job_id}?watch=true (docs/contract.md#job-watch): whole documents with ETags, resumable by ETag
on any replica, the stream staying open across a deletion, the latest version to a stream that
lags, through the real server and the real watcher."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest

from tests.support import Server, encode, put_session, session_doc, start_server, wait_until, write_atomic
from tests.support.reliability import process_figures
from tests.support.watch import Watch, open_raw_stream, read_head

FAST = {"SESSIONS_BOOKMARK_S": "0.5"}
Open = Callable[..., Watch]
Serve = Callable[..., Server]


class Shared(NamedTuple):
    server: Server
    folder: Path


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    """The real server over a folder where each test writes a job of its own: a job's stream
    hears only its job, so these tests share it."""
    folder = tmp_path_factory.mktemp("sessions")
    server = start_server(folder, tmp_path_factory.mktemp("logs"), env=FAST)
    yield Shared(server, folder)
    server.stop()


def served(server: Server, job_id: str) -> tuple[dict[str, object], str]:
    response = server.get(f"/api/v2/jobs/{job_id}")
    assert response.status_code == 200
    return response.json(), response.headers["etag"]


def put_served(shared: Shared, job_id: str, **fields: Any) -> None:
    """Write a new session and wait until the server serves it."""
    put_session(shared.folder, job_id, **fields)
    wait_until(lambda: shared.server.get(f"/api/v2/jobs/{job_id}").status_code == 200, what=f"{job_id} served")


def test_versions_deletion_and_rebirth(shared: Shared, watch: Open) -> None:
    server, sessions_dir = shared
    put_served(shared, "rebirth", status="running")
    document, etag = served(server, "rebirth")
    stream = watch(server, "/api/v2/jobs/rebirth?watch=true")
    first = stream.wait_for(lambda event: event["type"] != "BOOKMARK")
    assert first["type"] == "ADDED" and first["etag"] == etag and first["object"] == document

    put_session(sessions_dir, "rebirth", status="pending_hitl")
    modified = stream.wait_for(lambda event: event["type"] == "MODIFIED")
    document, etag = served(server, "rebirth")
    assert modified["object"] == document and modified["etag"] == etag

    (sessions_dir / "rebirth.json").unlink()
    deleted = stream.wait_for(lambda event: event["type"] == "DELETED")
    assert deleted["object"] == document and deleted["etag"] == etag  # the last version

    put_session(sessions_dir, "rebirth", status="completed")  # the stream stayed open
    reborn = stream.wait_for(lambda event: event["type"] == "ADDED" and event is not first)
    assert reborn["object"]["status"] == "completed"
    assert [event["type"] for event in stream.changes()] == ["ADDED", "MODIFIED", "DELETED", "ADDED"]


def test_a_job_that_does_not_exist_yet_sends_nothing_until_it_appears(shared: Shared, watch: Open) -> None:
    stream = watch(shared.server, "/api/v2/jobs/later?watch=true")
    stream.wait(lambda s: sum(event["type"] == "BOOKMARK" for event in s.events) >= 2, what="two bookmarks")
    assert stream.changes() == []
    put_session(shared.folder, "later")
    added = stream.wait_for(lambda event: event["type"] == "ADDED")
    assert added["object"]["job_id"] == "later"


@pytest.mark.parametrize("header", ["If-None-Match", "Last-Event-ID"])
@pytest.mark.parametrize("shape", ["as given", "weak", "unquoted"])
def test_naming_the_current_etag_skips_the_first_event(shared: Shared, watch: Open, header: str, shape: str) -> None:
    job_id = f"current-{header}-{shape.replace(' ', '-')}"
    put_served(shared, job_id)
    _, etag = served(shared.server, job_id)
    value = {"as given": etag, "weak": "W/" + etag, "unquoted": etag.strip('"')}[shape]
    stream = watch(shared.server, f"/api/v2/jobs/{job_id}?watch=true", headers={header: value})
    stream.wait(lambda s: any(event["type"] == "BOOKMARK" for event in s.events), what="a bookmark")
    assert stream.changes() == []
    put_session(shared.folder, job_id, status="completed")
    modified = stream.wait_for(lambda event: event["type"] != "BOOKMARK")
    assert modified["type"] == "MODIFIED" and modified["object"]["status"] == "completed"


def test_an_old_etag_gets_the_current_version(shared: Shared, watch: Open) -> None:
    server = shared.server
    put_served(shared, "old-etag", status="running")
    _, old = served(server, "old-etag")
    put_session(shared.folder, "old-etag", status="completed")
    wait_until(lambda: served(server, "old-etag")[1] != old, what="the new version")
    stream = watch(server, "/api/v2/jobs/old-etag?watch=true", headers={"Last-Event-ID": old})
    first = stream.wait_for(lambda event: event["type"] != "BOOKMARK")
    assert first["type"] == "ADDED" and first["object"]["status"] == "completed"


def test_a_client_whose_job_was_deleted_hears_deleted(shared: Shared, watch: Open) -> None:
    server = shared.server
    put_served(shared, "gone")
    _, etag = served(server, "gone")
    (shared.folder / "gone.json").unlink()
    wait_until(lambda: server.get("/api/v2/jobs/gone").status_code == 404, what="the deletion")
    stream = watch(server, "/api/v2/jobs/gone?watch=true", headers={"Last-Event-ID": etag})
    deleted = stream.wait_for(lambda event: event["type"] != "BOOKMARK")
    assert deleted["type"] == "DELETED" and deleted["etag"] == etag and deleted["object"] is None


def test_etags_resume_on_any_replica(shared: Shared, serve: Serve, watch: Open) -> None:
    """Two replicas over one folder give the same ETags: a client moves from one to the other
    without being sent the version it has."""
    put_session(shared.folder, "replica")
    one, two = shared.server, serve(shared.folder, env=FAST)  # the shared one, and a replica beside it
    first = watch(one, "/api/v2/jobs/replica?watch=true", sse=True)
    added = first.wait_for(lambda event: event["type"] == "ADDED")
    assert added["_id"] == added["etag"] == served(two, "replica")[1]
    resumed = watch(two, "/api/v2/jobs/replica?watch=true", sse=True, headers={"Last-Event-ID": added["_id"]})
    resumed.wait(lambda s: any(event["type"] == "BOOKMARK" for event in s.events), what="a bookmark")
    assert resumed.changes() == []
    put_session(shared.folder, "replica", status="failed")
    assert resumed.wait_for(lambda event: event["type"] == "MODIFIED")["object"]["status"] == "failed"
    assert first.wait_for(lambda event: event["type"] == "MODIFIED")["etag"] == served(two, "replica")[1]


def test_server_sent_events_carry_the_etag_as_id(shared: Shared, watch: Open) -> None:
    put_served(shared, "sse")
    stream = watch(shared.server, "/api/v2/jobs/sse?watch=true", sse=True)
    added = stream.wait_for(lambda event: event["type"] == "ADDED")
    assert added["_event"] == "ADDED" and added["_id"] == served(shared.server, "sse")[1]
    bookmark = stream.wait_for(lambda event: event["type"] == "BOOKMARK")
    assert bookmark["_id"] is None  # the id a reconnect sends stays the ETag


def test_a_pretty_printed_document_is_one_line_per_event(shared: Shared, watch: Open) -> None:
    doc = session_doc("pretty", note="line\nbreaks\r\nescaped", nested={"a": [1, 2, {"b": None}]})
    write_atomic(shared.folder / "pretty.json", encode(doc))
    stream = watch(shared.server, "/api/v2/jobs/pretty?watch=true")
    added = stream.wait_for(lambda event: event["type"] == "ADDED")
    assert added["object"] == doc
    assert bytes(stream.raw).count(b"\n") == len(stream.events)


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/api/v2/jobs/..%2Fx?watch=true", 400),
        ("/api/v2/jobs/.hidden?watch=true", 400),
        ("/api/v2/jobs/j?watch=perhaps", 400),
        ("/api/v2/jobs/j?watch=true&revision=abc.1", 400),
    ],
)
def test_bad_job_watches_are_a_400(shared: Shared, target: str, status: int) -> None:
    response = shared.server.raw("GET", target)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"


def test_a_lagging_stream_gets_the_latest_version_and_memory_stays_flat(sessions_dir: Path, serve: Serve) -> None:
    """A client that stops reading while a 1 MB session is rewritten many times: the server
    keeps only the latest version for it (RSS flat), and sends that when the client reads."""
    big = "x" * 1_000_000

    def write(step: int) -> None:
        write_atomic(sessions_dir / "big.json", encode(session_doc("big", blob=big, step=step)))

    write(0)
    server = serve(sessions_dir, env={"SESSIONS_KEEPALIVE_S": "120", "SESSIONS_BOOKMARK_S": "60"})
    with contextlib.closing(open_raw_stream(server.base_url, "/api/v2/jobs/big?watch=true", 4096)) as sock:
        assert read_head(sock).startswith(b"HTTP/1.1 200")
        write(1)
        wait_until(lambda: served(server, "big")[0]["step"] == 1, what="step 1")
        before = process_figures(server.process.pid)["rss"]
        for step in range(2, 42):
            write(step)
            wait_until(lambda step=step: served(server, "big")[0]["step"] == step, what=f"step {step}")
        grown = process_figures(server.process.pid)["rss"] - before
        assert grown < 12_000_000, f"RSS grew by {grown} bytes over 40 versions of a 1 MB session"
        sock.setblocking(True)
        data = b""
        steps: list[int] = []
        while 41 not in steps:
            chunk = sock.recv(1 << 20)
            assert chunk, "the connection closed"
            data += chunk
            *lines, data = data.split(b"\n")
            for line in lines:
                if line.startswith(b"{"):
                    steps.append(orjson.loads(line)["object"]["step"])
        assert len(steps) < 10, f"a backlog of versions was sent: {steps}"
        assert steps == sorted(steps)
