"""The service on a real network filesystem (sshfs over a loopback sshd the tests start,
attribute cache 3 s: tests/support/netfs.py), as docs/network-volumes.md describes it: `auto` polls
there and says so, writers that know nothing of the service are seen, and the file server going
away stops neither GETs from memory nor /livez, is reported truthfully, and is caught up on."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.api.application import LOADER_THREADS, WORK_THREADS
from app.store.reconciler import SCAN_STAT_THREADS
from tests.support import (
    Server,
    encode,
    listed,
    netfs,
    put_session,
    session_doc,
    wait_until,
    write_atomic,
    write_in_place,
)
from tests.support.ops import parse, run_check
from tests.support.reliability import logged, logs_settled, metric

pytestmark = pytest.mark.slow

# Guards, not figures (those are bench/netvolume.py's): the attribute cache (3 s, and sshfs's
# own cache of up to 4 s on top where a stat cannot go past it) plus polling, on a loaded machine.
SEEN_S = 20.0
# The pools a replica whose file server went away may start (each bounded): the cache misses'
# loader and the work pool; and, if the folder answers for a moment (sshfs's cache), a rescan's
# scanner and stat threads and the poll's stat threads.
POOLS_THAT_MAY_START = LOADER_THREADS + WORK_THREADS + 1 + 2 * SCAN_STAT_THREADS


def body(server: Server, job_id: str) -> bytes | None:
    response = server.get(f"/api/v2/jobs/{job_id}")
    return response.content if response.status_code == 200 else None


def test_auto_polls_on_sshfs_and_says_so(network_folder: netfs.NetworkFolder, serve: Callable[..., Server]) -> None:
    put_session(network_folder.server_path, "a")
    server = serve(network_folder.mount_path)  # no setting but the folder: auto must choose
    labels = {"mode": "poll", "setting": "auto", "filesystem": "fuse.sshfs", "reason": "network filesystem"}
    assert parse(server.get("/metrics").text).samples("sessions_watch_mode") == [(labels, 1.0)]
    assert metric(server, "sessions_watcher_up") == 0
    logs_settled(server)
    [line] = logged(server, "serving sessions")
    assert (line["watch"], line["filesystem"], line["watch_reason"]) == ("poll", "fuse.sshfs", "network filesystem")
    assert logged(server, "polling the sessions folder: native events miss other machines' writes on this filesystem")
    result = run_check(network_folder.mount_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "watch: poll (SESSIONS_WATCH=auto: the folder is on fuse.sshfs" in result.stderr
    assert list(listed(server)) == ["a"]


def test_writers_that_know_nothing_of_the_service_are_seen(
    network_folder: netfs.NetworkFolder, serve: Callable[..., Server]
) -> None:
    """Changes made on the file server's side (no event crosses the mount): temp file and
    rename, rewrite in place, creation, deletion; a finished session replaced is seen by the
    full rescan at the latest (sshfs gives no inode numbers in listings)."""
    server_side = network_folder.server_path
    for job_id in ("renamed", "in-place", "doomed"):
        put_session(server_side, job_id, status="running")
    put_session(server_side, "finished", status="completed")
    server = serve(network_folder.mount_path, env={"SESSIONS_RESCAN_INTERVAL_S": "5"})
    assert sorted(listed(server)) == ["doomed", "finished", "in-place", "renamed"]
    assert metric(server, "sessions_poll_hot_files") == 3  # the unfinished ones

    changes = {
        "renamed": (write_atomic, encode(session_doc("renamed", status="pending_hitl", step=2))),
        "in-place": (write_in_place, encode(session_doc("in-place", status="pending_review", step=2))),
        "created": (write_atomic, encode(session_doc("created", status="pending"))),
        "finished": (write_atomic, encode(session_doc("finished", status="completed", result={"late": True}))),
    }
    for job_id, (write, data) in changes.items():
        write(server_side / f"{job_id}.json", data)
    (server_side / "doomed.json").unlink()
    for job_id, (_, data) in changes.items():
        wait_until(lambda job_id=job_id, data=data: body(server, job_id) == data, SEEN_S, what=job_id)
    wait_until(lambda: server.get("/api/v2/jobs/doomed").status_code == 404, SEEN_S, what="the deletion")
    assert sorted(listed(server)) == ["created", "finished", "in-place", "renamed"]


def test_the_file_server_going_away(network_folder: netfs.NetworkFolder, serve: Callable[..., Server]) -> None:
    """sshd killed: GETs from memory go on, /livez stays fast, a cache miss is a 503 with
    Retry-After in bounded time, readiness stays 200 and says the folder is unreachable (as do
    a metric and the log); the server back, everything catches up."""
    server_side = network_folder.server_path
    an_hour_ago = time.time() - 3600
    for n in range(40):
        put_session(server_side, f"job-{n:02d}", status="running", n=n)
        # Old enough to trust: a file written within 2 s of its read is read again until it
        # is not ("racy"), and each such read would move the cache's order under the test.
        os.utime(server_side / f"job-{n:02d}.json", (an_hour_ago, an_hour_ago))
    # A cache of 10 documents: most sessions are evicted and need the folder to be read.
    server = serve(network_folder.mount_path, env={"SESSIONS_CACHE_MAX_ENTRIES": "10"})
    cached = [job_id for job_id in listed(server) if server.get(f"/api/v2/jobs/{job_id}").status_code == 200][-5:]
    assert metric(server, "sessions_folder_up") == 1
    assert server.get("/readyz").json()["folder"] == "ok"
    threads_before = _thread_count(server)

    network_folder.kill_server()
    wait_until(lambda: server.get("/readyz").json()["folder"] != "ok", SEEN_S, what="the folder reported down")
    ready = server.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"  # still serving
    assert metric(server, "sessions_folder_up") == 0
    wait_until(lambda: logged(server, "cannot list the sessions folder; serving what is in memory"), 5)
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        # /livez stays fast, and sessions in memory are served, all the while.
        for _ in range(20):
            started = time.monotonic()
            assert client.get("/livez").status_code == 200
            assert time.monotonic() - started < 1.0
        for job_id in listed(server):
            response = client.get(f"/api/v2/jobs/{job_id}")
            assert response.status_code in (200, 503), response.text
            if response.status_code == 503:  # evicted, and the folder cannot be read
                assert response.headers["retry-after"]
        for job_id in cached:
            assert client.get(f"/api/v2/jobs/{job_id}").status_code == 200
        assert client.get("/api/v2/jobs").status_code == 200
    # Bounded pools, no pile-up: at most the threads of the pools that may start meanwhile.
    assert _thread_count(server) <= threads_before + POOLS_THAT_MAY_START
    # Changes made while the server was away (on its own disk) are seen once it is back.
    put_session(server_side, "job-00", status="completed", n=0)
    put_session(server_side, "made-during", status="pending")
    (server_side / "job-39.json").unlink()
    network_folder.start_server()
    wait_until(lambda: server.get("/readyz").json()["folder"] == "ok", SEEN_S * 2, what="the folder back")
    wait_until(lambda: logged(server, "sessions folder is back"), 5)
    wait_until(lambda: "made-during" in listed(server), SEEN_S, what="a session created during the outage")
    wait_until(lambda: server.get("/api/v2/jobs/job-39").status_code == 404, SEEN_S, what="a deletion")
    wait_until(lambda: (server.get("/api/v2/jobs/job-00").json() or {}).get("status") == "completed", SEEN_S)
    for n in range(1, 39):
        assert server.get(f"/api/v2/jobs/job-{n:02d}").status_code == 200  # misses load again
    assert metric(server, "sessions_folder_up") == 1


def _thread_count(server: Server) -> int:
    return len(os.listdir(Path(f"/proc/{server.process.pid}/task")))


def test_a_restart_starts_from_the_warm_start_file(
    network_folder: netfs.NetworkFolder, serve: Callable[..., Server]
) -> None:
    """The first replica on the mount leaves `.warmstart/sessions` once warm; the next takes the
    finished sessions from it and reads from the folder what changed on the file server
    meanwhile, and the unfinished sessions (docs/network-volumes.md, "Warm start")."""
    server_side = network_folder.server_path
    an_hour_ago = time.time() - 3600
    for n in range(30):
        put_session(server_side, f"done-{n:02d}", status="completed", n=n)
        os.utime(server_side / f"done-{n:02d}.json", (an_hour_ago, an_hour_ago))  # old enough to trust
    put_session(server_side, "live", status="running")
    first = serve(network_folder.mount_path)
    assert metric(first, "sessions_warm_start_sessions") == 0
    wait_until(
        lambda: metric(first, "sessions_warm_start_writes_total", outcome="written") == 1, SEEN_S, what="the write"
    )
    assert (server_side / ".warmstart" / "sessions").is_file()
    assert first.stop() == 0
    result = run_check(network_folder.mount_path)
    assert re.search(r"warm start: \S+/\.warmstart/sessions: 3[01] sessions, written \d+ s ago", result.stderr)

    changed = encode(session_doc("done-03", status="completed", result="rewritten"))
    write_atomic(server_side / "done-03.json", changed)
    (server_side / "done-04.json").unlink()
    live = encode(session_doc("live", status="running", step=2))
    write_in_place(server_side / "live.json", live)
    # Until the mount's caches let go of the old attributes (3-4 s), a start would take the old
    # versions from the file, and a recheck 5 s after it correct them (tests/test_warmstart.py):
    # this test checks what a start sees of changes the mount shows.
    mounted = network_folder.mount_path
    wait_until(
        lambda: os.stat(mounted / "done-03.json").st_size == len(changed) and not (mounted / "done-04.json").exists(),
        SEEN_S,
        what="the changes, through the mount",
    )
    restarted = serve(network_folder.mount_path)
    assert metric(restarted, "sessions_warm_start_sessions") == 28  # 30, less the rewritten and the deleted
    for job_id in listed(restarted):
        assert body(restarted, job_id) == (server_side / f"{job_id}.json").read_bytes(), job_id
    assert body(restarted, "done-03") == changed and body(restarted, "live") == live
    assert body(restarted, "done-04") is None
    logs_settled(restarted)
    [line] = logged(restarted, "warm-up done")
    assert (line["files"], line["from_warm_start"]) == (30, 28)
