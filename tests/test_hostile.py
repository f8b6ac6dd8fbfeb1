"""Hostile HTTP, load with churn, and shutdown under load (issue 5), against the real server."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import positive_data_acceptance

from tests.support import (
    Server,
    encode,
    put_session,
    session_doc,
    start_server,
    wait_until,
    write_atomic,
    write_in_place,
)


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("sessions")
    for n in range(30):
        put_session(folder, f"job-{n}", status=["running", "completed", "pending_hitl"][n % 3], user_id=f"u{n % 4}")
    (folder / "broken.json").write_bytes(b"{nope")
    server = start_server(folder, tmp_path_factory.mktemp("logs"))
    yield server
    assert server.process.poll() is None, "the server died"
    server.stop()


def exercise(operation: Any) -> None:
    @given(data=st.data())
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(data: st.DataObject) -> None:
        case = data.draw(operation.as_strategy())
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    run()


def test_schemathesis_finds_no_server_error_and_no_schema_violation(hostile_server: Server) -> None:
    """Every operation of /openapi.json, fed generated requests: no 5xx, every response matches
    its declared status, content type, headers and schema. The opaque cursor cannot be described
    by a schema, so a schema-valid but made-up cursor may be rejected (400, declared)."""
    api = schemathesis.openapi.from_url(hostile_server.base_url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.label for op in operations} >= {"GET /api/v2/jobs/{job_id}", "GET /api/v2/jobs", "GET /readyz"}
    for operation in operations:
        exercise(operation)
    assert hostile_server.get("/livez").status_code == 200


@pytest.mark.parametrize(
    "target",
    [
        "/api/v2/jobs/" + "a" * 100_000,
        "/" + "x" * 60_000,
        "/api/v2/jobs?" + "status=" + "s," * 30_000,
        "/api/v2/jobs?" + "&".join(f"p{n}=1" for n in range(5000)),
        "/api/v2/jobs?user_id=" + "%ff" * 1000,
        "/api/v2/jobs/%00%00",
        "/api/v2/jobs/%",
        "/api/v2/jobs?limit=%",
    ],
)
def test_oversized_and_malformed_requests_get_a_4xx(hostile_server: Server, target: str) -> None:
    try:
        response = hostile_server.raw("GET", target)
    except (ConnectionError, OSError, httpx.HTTPError):
        pass  # closing the connection on an absurd request line is fine too
    else:
        assert 400 <= response.status_code < 500, (response.status_code, response.content[:200])
    assert hostile_server.get("/livez").status_code == 200


def test_oversized_headers(hostile_server: Server) -> None:
    for headers in [
        {"X-Big": "v" * 200_000},
        {f"X-H{n}": "v" for n in range(2000)},
        {"If-None-Match": '"x",' * 20_000},
    ]:
        try:
            response = hostile_server.raw("GET", "/api/v2/jobs/job-1", headers)
        except (ConnectionError, OSError):
            continue
        assert response.status_code < 500
    assert hostile_server.get("/api/v2/jobs/job-1").status_code == 200


def test_silent_clients_do_not_hold_the_server(hostile_server: Server) -> None:
    host, port = hostile_server.base_url.removeprefix("http://").split(":")
    idle = []
    try:
        for _ in range(300):  # connections that send nothing, or half a request line
            sock = socket.create_connection((host, int(port)), timeout=5)
            if len(idle) % 2:
                sock.sendall(b"GET /api/v2/jo")
            idle.append(sock)
        started = time.monotonic()
        for _ in range(20):
            assert hostile_server.get("/livez").status_code == 200
        assert time.monotonic() - started < 5
    finally:
        for sock in idle:
            sock.close()


# --- load with churn -------------------------------------------------------------------------------


def process_figures(pid: int) -> tuple[int, int, int]:
    """(open file descriptors, threads, resident bytes) of a process."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return fds, int(status["Threads"]), int(status["VmRSS"].split()[0]) * 1024


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_soak_reads_and_lists_while_files_churn(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    ids = [f"job-{n}" for n in range(300)]
    for job_id in ids:
        put_session(sessions_dir, job_id, payload="x" * 2000)
    cache_bytes = 200_000  # smaller than the folder: misses and evictions are part of the soak
    server = serve(sessions_dir, env={"SESSIONS_CACHE_MAX_BYTES": str(cache_bytes), "SESSIONS_LOG_LEVEL": "warning"})
    pid = server.process.pid
    for job_id in ids:  # one pass to reach the steady state
        server.get(f"/api/v2/jobs/{job_id}")
    fds_before, threads_before, rss_before = process_figures(pid)

    duration = 25.0
    deadline = time.monotonic() + duration
    stop = threading.Event()
    failures: list[str] = []
    counts = {"requests": 0, "writes": 0}
    slowest = [0.0]

    def reader(seed: int) -> None:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            n = seed
            while not stop.is_set() and time.monotonic() < deadline and counts["requests"] < 200_000:
                n += 7
                path = f"/api/v2/jobs/{ids[n % len(ids)]}" if n % 5 else "/api/v2/jobs?limit=50&status=running"
                started = time.monotonic()
                response = client.get(path)
                slowest[0] = max(slowest[0], time.monotonic() - started)
                counts["requests"] += 1
                if response.status_code >= 500:
                    failures.append(f"{path}: {response.status_code} {response.text[:200]}")

    def writer() -> None:
        n = 0
        while not stop.is_set() and time.monotonic() < deadline and counts["writes"] < 100_000:
            job_id = ids[n % len(ids)]
            data = encode(session_doc(job_id, status=["running", "completed"][n % 2], n=n, payload="y" * 2000))
            (write_atomic if n % 2 else write_in_place)(sessions_dir / f"{job_id}.json", data)
            counts["writes"] += 1
            n += 1
            time.sleep(0.002)  # a writer's pace, ~500 writes/s: not synchronisation

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)] + [threading.Thread(target=writer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration + 30)
    stop.set()
    assert not failures, failures[:5]
    assert counts["requests"] > 1000 and counts["writes"] > 1000
    assert slowest[0] < 2.0, f"a request waited {slowest[0]:.3f}s"

    # once quiet, the service agrees with the folder
    for job_id in ids[:50]:
        expected = (sessions_dir / f"{job_id}.json").read_bytes()
        wait_until(
            lambda job_id=job_id, expected=expected: server.get(f"/api/v2/jobs/{job_id}").content == expected, 10
        )
    fds_after, threads_after, rss_after = process_figures(pid)
    assert fds_after <= fds_before + 5, (fds_before, fds_after)  # nothing leaked
    assert threads_after <= threads_before + 4, (threads_before, threads_after)  # the loader pool may fill up
    assert rss_after < rss_before + 64 * 1024 * 1024, (rss_before, rss_after)  # flat within the cache bound


# --- shutdown under load -------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_sigterm_under_load_finishes_accepted_requests_and_exits_0(
    sessions_dir: Path, serve: Callable[..., Server]
) -> None:
    big = encode(session_doc("big", payload="z" * 500_000))
    (sessions_dir / "big.json").write_bytes(big)
    server = serve(sessions_dir, env={"SESSIONS_SHUTDOWN_DELAY_S": "1"})
    stop = threading.Event()
    incomplete: list[str] = []
    completed = [0]

    def hammer() -> None:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            for _ in range(100_000):
                if stop.is_set():
                    return
                try:
                    response = client.get("/api/v2/jobs/big")
                except httpx.ConnectError:
                    return  # not accepted: the server stopped listening
                except httpx.HTTPError as exc:  # accepted but cut short
                    incomplete.append(repr(exc))
                    return
                if response.status_code != 200 or response.content != big:
                    incomplete.append(f"{response.status_code}, {len(response.content)} bytes")
                completed[0] += 1

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: completed[0] > 20, 10)
    server.process.send_signal(signal.SIGTERM)
    with httpx.Client(base_url=server.base_url, timeout=5) as probe:
        assert wait_until(lambda: probe.get("/readyz").status_code == 503, 1.0)
    assert server.process.wait(30) == 0
    stop.set()
    for thread in threads:
        thread.join(10)
    # keep-alive connections are closed by the server between requests, which a client may see
    # as a disconnect on its next request; but no response ever arrives broken or as an error
    assert all("RemoteProtocolError" in failure or "ReadError" in failure for failure in incomplete), incomplete
    assert not [failure for failure in incomplete if "bytes" in failure], incomplete


def test_the_server_never_serves_a_file_outside_its_folder(tmp_path: Path, serve: Callable[..., Server]) -> None:
    folder = tmp_path / "sessions"
    folder.mkdir()
    secret = tmp_path / "secret.json"
    secret.write_bytes(orjson.dumps({"password": "hunter2"}))
    (folder / "leak.json").symlink_to(secret)
    (folder / "up.json").symlink_to("../secret.json")
    server = serve(folder)
    for path in ["/api/v2/jobs/leak", "/api/v2/jobs/up", "/api/v2/jobs/..%2Fsecret", "/api/v2/jobs/%2E%2E%2Fsecret"]:
        response = server.raw("GET", path)
        assert response.status_code in (400, 404)
        assert b"hunter2" not in response.content
    assert b"hunter2" not in server.get("/api/v2/jobs?limit=1000").content
