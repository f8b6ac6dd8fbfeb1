"""Structured logs on stdout: one JSON object a line (or readable text), an access line per
request with its request id, and invalid files logged once per change with the reason."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support import (
    REPO,
    Server,
    free_port,
    put_session,
    server_env,
    start_server,
    wait_until,
    write_atomic,
    write_in_place,
)
from tests.support.ops import JOB_ROUTE, LIST_ROUTE, scrape, wait_for_scrape
from tests.support.reliability import logged, logs_settled

POLL = {"SESSIONS_WATCH": "poll", "SESSIONS_POLL_INTERVAL_MS": "50"}
GENERATED_ID = re.compile(r"[0-9a-f]{16}")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that write no files: each finds its own lines in the log by a
    request id no other test sends."""
    folder = tmp_path_factory.mktemp("sessions")
    put_session(folder, "a")
    (folder / "bad.json").write_bytes(b"not json")  # a warning at warm-up
    server = start_server(folder, tmp_path_factory.mktemp("logs"))
    yield server
    server.stop()


def access_lines(server: Server) -> list[dict[str, Any]]:
    return [entry for entry in server.json_logs() if entry.get("logger") == "app.access"]


def access_line_for(server: Server, request_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((e for e in access_lines(server) if e.get("request_id") == request_id), None)

    return wait_until(find, 10, what=f"the access line of request {request_id}")


def test_every_stdout_line_is_a_json_object_with_the_common_fields(shared: Server) -> None:
    server = shared
    paths = ("/api/v2/jobs/a", "/api/v2/jobs/nope", "/api/v2/jobs/..%2F", "/api/v2/jobs", "/metrics", "/nope")
    for n, path in enumerate(paths):
        server.raw("GET", path, headers={"X-Request-ID": f"common-{n}"})
    # Not a count of access lines: the readiness polls of the start wrote some already.
    for n in range(len(paths)):
        access_line_for(server, f"common-{n}")
    lines = server.logs()
    assert lines
    levels = set()
    for line in lines:
        entry = orjson.loads(line)  # every line, not only those that look like JSON
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        assert TIME.fullmatch(entry["time"]), entry["time"]
        assert entry["level"] in {"debug", "info", "warning", "error", "critical"}, line
        assert isinstance(entry["message"], str) and entry["message"], line
        levels.add(entry["level"])
    assert {"info", "warning"} <= levels
    loggers = {entry["logger"] for entry in server.json_logs()}
    assert "uvicorn.access" not in loggers  # one access line a request, ours


# (path, route, status) of an access line: the route is the template, the path the raw one.
ACCESS = [
    ("/api/v2/jobs/a", JOB_ROUTE, 200),
    ("/api/v2/jobs/missing-1", JOB_ROUTE, 404),
    ("/api/v2/jobs/.hidden", JOB_ROUTE, 400),
    ("/api/v2/jobs?limit=2", LIST_ROUTE, 200),
    ("/api/v2/jobs/", LIST_ROUTE, 200),
    ("/livez", "/livez", 200),
    ("/not/a/route", "unmatched", 404),
]


@pytest.mark.parametrize(("path", "route", "status"), ACCESS)
def test_an_access_line_per_request(shared: Server, path: str, route: str, status: int) -> None:
    server = shared
    request_id = f"req-{ACCESS.index((path, route, status)):04d}"  # this case's own
    response = server.raw("GET", path, headers={"X-Request-ID": request_id})
    assert response.status_code == status
    entry = access_line_for(server, request_id)
    assert entry["level"] == "info"
    assert entry["method"] == "GET"
    assert entry["route"] == route
    assert entry["status"] == status
    assert isinstance(entry["duration_ms"], int | float) and 0 <= entry["duration_ms"] < 10_000
    assert entry["path"] == path.partition("?")[0]
    assert [e for e in access_lines(server) if e.get("request_id") == request_id] == [entry]  # exactly one


# (sent X-Request-ID, echoed: "same" or "generated")
REQUEST_IDS = [
    ("trace-123", "same"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "same"),
    ("a" * 128, "same"),
    ("a" * 129, "generated"),
    ("x" * 2000, "generated"),
    ("has space", "generated"),
    ('quote"and<tag>', "generated"),
    ("new\\nline", "generated"),
    ("ünïcode", "generated"),
    ("", "generated"),
]


@pytest.mark.parametrize(("sent", "echoed"), REQUEST_IDS)
def test_the_request_id_is_echoed_and_logged(shared: Server, sent: str, echoed: str) -> None:
    server = shared
    response = server.raw("GET", "/api/v2/jobs/a", headers={"X-Request-ID": sent})
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    if echoed == "same":
        assert request_id == sent
    else:
        assert GENERATED_ID.fullmatch(request_id), request_id
    entry = access_line_for(server, request_id)
    assert entry["route"] == JOB_ROUTE
    if echoed == "generated" and sent:
        assert sent not in server.log_path.read_text(errors="replace")  # a rejected id is not logged either


def test_a_request_id_is_generated_when_absent_and_differs_per_request(shared: Server) -> None:
    server = shared
    ids = [server.get("/livez").headers["x-request-id"] for _ in range(20)]
    assert all(GENERATED_ID.fullmatch(request_id) for request_id in ids), ids
    assert len(set(ids)) == len(ids)
    for request_id in ids[:3]:
        assert access_line_for(server, request_id)["route"] == "/livez"


ERRORS = ["/api/v2/jobs/nope", "/api/v2/jobs/..%2F..%2Fx", "/api/v2/jobs?limit=abc", "/nope"]


@pytest.mark.parametrize("path", ERRORS)
def test_error_responses_carry_the_request_id_too(shared: Server, path: str) -> None:
    server = shared
    request_id = f"err-{ERRORS.index(path)}"  # this case's own
    response = server.raw("GET", path, headers={"X-Request-ID": request_id})
    assert 400 <= response.status_code < 500
    assert response.headers["x-request-id"] == request_id
    assert access_line_for(server, request_id)["status"] == response.status_code


def test_text_format_gives_readable_lines(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    put_session(sessions_dir, "a")
    (sessions_dir / "bad.json").write_bytes(b"[]")
    server = serve(sessions_dir, env={"SESSIONS_LOG_FORMAT": "text"})
    server.get("/api/v2/jobs/a", headers={"X-Request-ID": "text-1"})

    def access() -> str | None:
        return next((line for line in server.logs() if "request_id=text-1" in line), None)

    line = wait_until(access, 10, what="the text access line")
    assert "app.access" in line and "GET /api/v2/jobs/{job_id} 200" in line
    assert "duration_ms=" in line and "status=200" in line
    lines = server.logs()
    assert server.json_logs() == []  # no JSON at all
    for text in lines:
        assert not text.startswith("{"), text
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ", text), text
    assert any("invalid session file" in text and "bad" in text and "not a JSON object" in text for text in lines)


def invalid_warnings(server: Server, job_id: str) -> list[dict[str, Any]]:
    return [
        entry
        for entry in server.json_logs()
        if entry.get("message") == "invalid session file" and entry.get("job_id") == job_id
    ]


@pytest.mark.parametrize("env", [{}, POLL], ids=["native", "poll"])
def test_an_invalid_file_is_logged_once_per_change_with_its_reason(
    sessions_dir: Path, serve: Callable[..., Server], env: dict[str, str]
) -> None:
    put_session(sessions_dir, "good")
    write_atomic(sessions_dir / "bad.json", b"[1, 2]")
    server = serve(sessions_dir, env={"SESSIONS_RESCAN_INTERVAL_S": "0.05", **env})
    first = wait_until(lambda: invalid_warnings(server, "bad"), 10, what="the warning at warm-up")
    assert first[0]["level"] == "warning"
    assert "not a JSON object" in first[0]["reason"]
    # Many rescans later, and requests for it, still one line.
    rescans = scrape(server).value("sessions_rescans_total")
    for _ in range(3):
        assert server.get("/api/v2/jobs/bad").status_code == 404
    wait_for_scrape(server, lambda s: s.value("sessions_rescans_total") >= rescans + 10, what="ten rescans")
    logs_settled(server)
    assert len(invalid_warnings(server, "bad")) == 1

    write_in_place(sessions_dir / "bad.json", b'{"job_id": "other"}')  # a change: a new reason
    second = wait_until(lambda: invalid_warnings(server, "bad")[1:], 10, what="a warning for the change")
    assert "job_id" in second[0]["reason"]
    rescans = scrape(server).value("sessions_rescans_total")
    wait_for_scrape(server, lambda s: s.value("sessions_rescans_total") >= rescans + 10, what="ten more rescans")
    logs_settled(server)
    assert len(invalid_warnings(server, "bad")) == 2
    assert invalid_warnings(server, "good") == []

    # A served session whose file turns invalid: logged once, and says it is still served.
    write_in_place(sessions_dir / "good.json", b"{")
    stale = wait_until(lambda: invalid_warnings(server, "good"), 10, what="the stale warning")
    assert stale[0]["served"] is True
    assert "JSON" in stale[0]["reason"]


# --- a stdout that stops draining, and the lines of the last requests ------------------------------


def start_with_stdout_pipe(sessions_dir: Path, log_dir: Path) -> Server:
    """The real server with stdout a pipe that nobody reads (a stuck log shipper) until the test
    starts copying it to the Server's log file; stderr to a file of its own."""
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    log_path.touch()
    with open(log_dir / f"server-{port}.stderr", "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=server_env(sessions_dir),
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    wait_until(lambda: server.get("/readyz").status_code == 200, 60, what="readiness")
    return server


def copy_stdout(server: Server) -> threading.Thread:
    """Start draining the server's stdout into its log file (until the process exits)."""
    stdout = server.process.stdout
    assert stdout is not None

    def copy() -> None:
        with open(server.log_path, "ab") as log:
            while chunk := stdout.read1(1 << 16):
                log.write(chunk)
                log.flush()

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


@pytest.mark.serial  # bounds every request's latency: measured alone, not beside other tests
@pytest.mark.timeout(180)
def test_a_stdout_nobody_reads_stalls_nothing_and_the_dropped_lines_are_counted_then_logged_once(
    sessions_dir: Path, tmp_path: Path
) -> None:
    put_session(sessions_dir, "a")
    server = start_with_stdout_pipe(sessions_dir, tmp_path)
    copier: threading.Thread | None = None
    try:
        long_path = "/api/v2/jobs/" + "x" * 128  # a 404 with a long path: larger lines, fewer requests
        slowest = 0.0
        dropped = 0.0
        deadline = time.monotonic() + 90
        for n in range(20_000):
            assert time.monotonic() < deadline, f"{n} requests in 90 s"
            started = time.monotonic()
            path = "/api/v2/jobs/a" if n % 2 else long_path
            assert server.get(path, headers={"X-Request-ID": f"stuck-{n}"}).status_code in (200, 404)
            if n % 100 == 0:
                assert server.get("/livez").status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            if n % 250 == 0 and n:
                dropped = scrape(server).value("sessions_log_lines_dropped_total")
                if dropped >= 100:  # stdout has been stuck for a while: the buffer is full
                    break
        assert dropped >= 100
        # Nothing waited on stdout: a request that did would wait until the test reads it.
        assert slowest < 8, f"a request took {slowest:.1f} s while stdout was stuck"
        assert server.get("/readyz").status_code == 200

        copier = copy_stdout(server)  # the log shipper is back
        report = wait_until(
            lambda: logged(server, "log lines dropped"), 20, what="the line saying how many lines were dropped"
        )
        final = wait_for_scrape(
            server, lambda s: s.value("sessions_log_lines_dropped_total") > 0, what="the dropped lines counted"
        ).value("sessions_log_lines_dropped_total")
        assert len(report) == 1, report
        assert report[0]["level"] == "warning" and report[0]["dropped"] == final >= dropped
        # What was kept is whole lines, in order, and the requests after the drain are logged again.
        ids = [int(e["request_id"][6:]) for e in access_lines(server) if e.get("request_id", "").startswith("stuck-")]
        assert ids == sorted(ids) and ids
        response = server.get("/livez", headers={"X-Request-ID": "after-the-drain"})
        assert access_line_for(server, "after-the-drain")["status"] == response.status_code
    finally:
        if copier is None:
            copier = copy_stdout(server)  # so that the shutdown's lines can be written too
        assert server.stop() == 0
        copier.join(10)
        assert server.process.stdout is not None
        server.process.stdout.close()


def request_ids(server: Server, prefix: str) -> list[str]:
    return [e["request_id"] for e in access_lines(server) if e.get("request_id", "").startswith(prefix)]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("delay", ["0", "1"], ids=["no delay", "1 s delay"])
def test_no_access_line_is_lost_across_sigterm(sessions_dir: Path, serve: Callable[..., Server], delay: str) -> None:
    put_session(sessions_dir, "a")
    server = serve(sessions_dir, env={"SESSIONS_SHUTDOWN_DELAY_S": delay})
    answered: list[str] = []
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        for n in range(300):
            response = client.get("/api/v2/jobs/a", headers={"X-Request-ID": f"sig-{n}"})
            assert response.status_code == 200
            answered.append(f"sig-{n}")
    server.process.send_signal(signal.SIGTERM)
    attempted = None
    if delay != "0":  # requests answered during the shutdown delay must be logged too
        deadline = time.monotonic() + 10
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            for n in range(5000):
                if time.monotonic() > deadline:
                    break
                attempted = f"sig-during-{n}"
                try:
                    response = client.get("/api/v2/jobs/a", headers={"X-Request-ID": attempted})
                except httpx.HTTPError:
                    break  # the listener is closed: the delay is over
                assert response.status_code == 200
                answered.append(attempted)
        assert any(x.startswith("sig-during-") for x in answered)
    assert server.process.wait(30) == 0
    logged_ids = request_ids(server, "sig-")
    assert len(logged_ids) == len(set(logged_ids)), "an access line written twice"
    assert set(answered) <= set(logged_ids), sorted(set(answered) - set(logged_ids))[:5]
    # A request in flight as the listener closed may have been answered to a client that gave up.
    assert set(logged_ids) - set(answered) <= {attempted}
    assert "stopped" in [entry["message"] for entry in server.json_logs()]
