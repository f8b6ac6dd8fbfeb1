"""Hostile HTTP against the real server: schemathesis over /openapi.json (bounded), oversized
paths, headers and query strings, clients that connect and send nothing, and bad tokens."""

from __future__ import annotations

import os
import socket
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

from tests.support import Server, encode, put_session, session_doc, start_server, wait_until
from tests.support.reliability import process_figures

TOKEN = "s3cr3t-token"
KEEPALIVE = 2  # SESSIONS_KEEPALIVE_S of the servers that let idle and stalled clients go


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("sessions")
    for n in range(25):
        put_session(folder, f"job-{n}", status=["running", "completed", "pending_hitl"][n % 3], user_id=f"u{n % 4}")
    (folder / "broken.json").write_bytes(b"{nope")
    # Streams and long polls the fuzzer opens (watch=true, Prefer: wait=N) end within a second.
    env = {"SESSIONS_LOG_LEVEL": "warning", "SESSIONS_STREAM_TIMEOUT_S": "0.2", "SESSIONS_MAX_WAIT_S": "1"}
    server = start_server(folder, tmp_path_factory.mktemp("logs"), env=env)
    yield server
    assert server.process.poll() is None, "the server died"
    assert server.stop() == 0


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with a short keep-alive for the tests of heads, paths and clients that stall: a
    session `j`, `big` (larger than the socket buffers), and two links to a secret file beside
    the folder, outside it."""
    root = tmp_path_factory.mktemp("outside")
    folder = root / "sessions"
    folder.mkdir()
    put_session(folder, "j")
    (folder / "big.json").write_bytes(encode(session_doc("big", payload="z" * 4_000_000)))
    (root / "secret.json").write_bytes(orjson.dumps({"password": "hunter2"}))
    (folder / "leak.json").symlink_to(root / "secret.json")
    (folder / "up.json").symlink_to("../secret.json")
    env = {"SESSIONS_KEEPALIVE_S": str(KEEPALIVE), "SESSIONS_LOG_LEVEL": "warning"}
    server = start_server(folder, tmp_path_factory.mktemp("logs"), env=env)
    yield server
    server.stop()


def no_server_errors(server: Server) -> None:
    """No 5xx was ever answered (readiness's 503 while warming excepted), per the server's own count."""
    text = server.get("/metrics").text
    errors = [line for line in text.splitlines() if 'status="5' in line and 'route="/readyz"' not in line]
    assert not errors, errors


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_schemathesis_no_5xx_and_every_response_matches_the_schema(hostile: Server) -> None:
    api = schemathesis.openapi.from_url(hostile.base_url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.label for op in operations} >= {
        "GET /api/v2/jobs/{job_id}",
        "GET /api/v2/jobs",
        "GET /readyz",
        "GET /problems/{name}",
    }
    failures: list[str] = []
    for operation in operations:
        try:
            fuzz(operation)
        except Exception as exc:  # collect every operation's failure, not only the first
            failures.append(f"{operation.label}: {exc}"[:2000])
    assert not failures, "\n\n".join(failures)
    no_server_errors(hostile)


def fuzz(operation: Any) -> None:
    @given(data=st.data())
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(data: st.DataObject) -> None:
        case = data.draw(operation.as_strategy())
        # A schema-valid but made-up cursor is rightly a 400: it cannot be described by a schema.
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    run()


OVERSIZED = {
    "a 100 kB job id": "/api/v2/jobs/" + "a" * 100_000,
    "a 129-character job id": "/api/v2/jobs/" + "a" * 129,
    "a 60 kB unknown path": "/" + "x" * 60_000,
    "60,000 statuses": "/api/v2/jobs?status=" + "s," * 30_000,
    "5,000 parameters": "/api/v2/jobs?" + "&".join(f"p{n}=1" for n in range(5000)),
    "a 50 kB cursor": "/api/v2/jobs?cursor=" + "A" * 50_000,
    "a huge limit": "/api/v2/jobs?limit=" + "9" * 5000,
    "percent-encoded junk": "/api/v2/jobs?user_id=" + "%ff" * 3000,
    "a truncated escape": "/api/v2/jobs?limit=%",
    "NULs in the id": "/api/v2/jobs/%00%00",
    "dots and slashes": "/api/v2/jobs/..%2F..%2Fetc%2Fpasswd",
}


@pytest.mark.parametrize("target", list(OVERSIZED.values()), ids=list(OVERSIZED))
def test_oversized_and_malformed_targets_get_a_4xx(hostile: Server, target: str) -> None:
    try:
        response = hostile.raw("GET", target)
    except (ConnectionError, OSError, httpx.HTTPError):
        pass  # refusing an absurd request line by closing the connection is fine too
    else:
        assert 400 <= response.status_code < 500, (response.status_code, response.content[:200])
        # uvicorn's HTTP parser answers what it cannot parse itself, in plain text; the app in problem+json
        if response.content and response.content != b"Invalid HTTP request received.":
            assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    assert hostile.get("/livez").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Big": "v" * 200_000},
        {f"X-H{n}": "v" for n in range(3000)},
        {"If-None-Match": '"x",' * 20_000},
        {"Cookie": "c=" + "x" * 100_000},
        {"X-Request-ID": "r" * 10_000},
    ],
    ids=["a 200 kB header", "3,000 headers", "a long If-None-Match", "a 100 kB cookie", "a long request id"],
)
def test_oversized_headers(hostile: Server, headers: dict[str, str]) -> None:
    try:
        response = hostile.raw("GET", "/api/v2/jobs/job-1", headers)
    except (ConnectionError, OSError):
        pass
    else:
        assert response.status_code < 500, response.status_code
    assert hostile.get("/api/v2/jobs/job-1").status_code == 200


@pytest.mark.timeout(90)
def test_silent_clients_cannot_hold_the_server(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    """Clients that connect and send nothing, or half a request, must be let go within the
    idle timeout, or with a descriptor limit (a container's) they hold the server: here a
    limit of 256 and 300 such clients."""
    put_session(sessions_dir, "j")
    keepalive = 2
    server = serve(
        sessions_dir,
        env={"SESSIONS_KEEPALIVE_S": str(keepalive), "SESSIONS_LOG_LEVEL": "warning"},
        prefix=("prlimit", "--nofile=256", "--"),
    )
    host, port = server.base_url.removeprefix("http://").split(":")
    silent: list[socket.socket] = []
    try:
        for n in range(300):
            try:
                sock = socket.create_connection((host, int(port)), timeout=2)
            except OSError:
                break
            if n % 3 == 1:
                sock.sendall(b"GET /api/v2/jo")  # half a request line
            elif n % 3 == 2:
                sock.sendall(b"GET /api/v2/jobs/j HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            silent.append(sock)
        assert len(silent) > 200
        started = time.monotonic()

        def served() -> bool:
            with httpx.Client(base_url=server.base_url, timeout=2) as client:
                return client.get("/api/v2/jobs/j").status_code == 200

        wait_until(served, keepalive + 10, what="a new client served while silent ones hold connections")
        assert time.monotonic() - started < keepalive + 10
        # and the silent connections were closed by the server (EOF or reset)
        deadline = time.monotonic() + keepalive + 5
        open_ones = 0
        for sock in silent[:30]:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if sock.recv(1024) != b"" and not sock.recv(65536) == b"":
                    open_ones += 1
            except TimeoutError:
                open_ones += 1
            except OSError:
                pass
        assert open_ones == 0, f"{open_ones} of 30 silent connections are still open"
    finally:
        for sock in silent:
            sock.close()
    assert server.get("/livez").status_code == 200


@pytest.mark.timeout(60)
def test_a_huge_request_head_is_refused_without_buffering_it(quiet: Server) -> None:
    """httptools has no bound on a head: without one, a client sending a header of hundreds of
    megabytes has it buffered whole (and a few such clients exhaust a container's memory)."""
    server = quiet
    pid = server.process.pid
    before = process_figures(pid)["rss"]
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /api/v2/jobs/j HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            while sent < 64 * 2**20:  # 64 MiB of one header, unless the server hangs up first
                sock.sendall(b"v" * 2**20)
                sent += 2**20
        except OSError:
            pass  # refused and closed: what should happen
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    assert sent < 64 * 2**20, "the server kept reading a 64 MiB header"
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"application/problem+json" in answer
    assert process_figures(pid)["rss"] < before + 16 * 2**20, (before, process_figures(pid)["rss"])
    assert server.get("/api/v2/jobs/j").status_code == 200


@pytest.mark.timeout(60)
def test_a_body_trickled_byte_by_byte_is_cut_off(quiet: Server) -> None:
    """Each byte received cancels uvicorn's keep-alive timer: a request whose body trickles in
    must still arrive whole within SESSIONS_KEEPALIVE_S, or its connection is closed."""
    keepalive = KEEPALIVE
    server = quiet
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=1) as sock:
        sock.sendall(b"GET /api/v2/jobs/j HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        started = time.monotonic()
        closed_after = None
        while time.monotonic() - started < keepalive + 10:
            try:
                sock.sendall(b"x")
                if sock.recv(65536) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue  # nothing to read yet: trickle on
            except OSError:
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None, "a trickled body held its connection"
    assert closed_after < keepalive + 5, closed_after
    assert server.get("/livez").status_code == 200


@pytest.mark.timeout(60)
def test_the_head_bound_counts_heads_only(quiet: Server) -> None:
    """Requests pipelined behind a short head, and a body, are not a large head."""
    server = quiet
    host, port = server.base_url.removeprefix("http://").split(":")
    request = b"GET /api/v2/jobs/j HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request * 2000)  # 82 kB in one write
        answers = b""
        deadline = time.monotonic() + 30
        while answers.count(b"HTTP/1.1 200 ") < 2000 and time.monotonic() < deadline:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            answers += chunk
    assert answers.count(b"HTTP/1.1 200 ") == 2000 and b" 431 " not in answers
    response = server.client.post("/api/v2/jobs/j", content=b"x" * 100_000)
    assert response.status_code == 405, response.status_code
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.timeout(60)
def test_a_client_that_stops_reading_is_let_go(quiet: Server) -> None:
    """A response the client never reads cannot be sent: after the keep-alive timeout without
    progress the connection is aborted, or such clients pin descriptors and buffers for ever."""
    keepalive = KEEPALIVE
    server = quiet
    pid = server.process.pid
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.connect((host, int(port)))
        sock.sendall(b"GET /api/v2/jobs/big HTTP/1.1\r\nHost: x\r\n\r\n")
        client_port = sock.getsockname()[1]
        wait_until(lambda: server_holds(pid, int(port), client_port), 5, what="the connection accepted")
        started = time.monotonic()
        wait_until(
            lambda: not server_holds(pid, int(port), client_port), keepalive + 10, what="the stalled connection let go"
        )
        assert time.monotonic() - started < keepalive + 5
    finally:
        sock.close()
    assert server.get("/livez").status_code == 200


def server_holds(pid: int, server_port: int, client_port: int) -> bool:
    """Whether the server process still has the socket of this connection open."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if (local, remote) == (server_port, client_port):
            inodes.add(fields[9])
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue  # closed while listed
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def test_the_server_never_serves_a_file_outside_its_folder(quiet: Server) -> None:
    server = quiet  # its folder links to a secret file outside it
    for path in ["/api/v2/jobs/leak", "/api/v2/jobs/up", "/api/v2/jobs/..%2Fsecret", "/api/v2/jobs/%2E%2E%2Fsecret"]:
        response = server.raw("GET", path)
        assert response.status_code in (400, 404)
        assert b"hunter2" not in response.content
    assert b"hunter2" not in server.get("/api/v2/jobs?limit=1000").content


# --- bad tokens ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("sessions")
    put_session(folder, "j")
    server = start_server(
        folder, tmp_path_factory.mktemp("logs"), env={"SESSIONS_API_TOKEN": TOKEN, "SESSIONS_LOG_LEVEL": "warning"}
    )
    yield server
    assert server.stop() == 0


BAD_AUTHORIZATION = {
    "none": None,
    "empty": "",
    "scheme only": "Bearer",
    "scheme and space": "Bearer ",
    "wrong token": "Bearer nope",
    "a prefix of it": "Bearer " + TOKEN[:-1],
    "it plus more": "Bearer " + TOKEN + "x",
    "wrong scheme": "Basic " + TOKEN,
    "no scheme": TOKEN,
    "token case changed": "Bearer " + TOKEN.upper(),
    "very long": "Bearer " + "t" * 8000,
    "non-ASCII bytes": "Bearer \xff\xfe" + TOKEN,
    "NUL inside": "Bearer " + TOKEN[:3] + "\x00" + TOKEN[3:],
}


@pytest.mark.parametrize("authorization", list(BAD_AUTHORIZATION.values()), ids=list(BAD_AUTHORIZATION))
@pytest.mark.parametrize("target", ["/api/v2/jobs/j", "/api/v2/jobs", "/api/v2/jobs/%2e%2e", "/api/v2/nothing"])
def test_bad_tokens_get_a_401_and_nothing_else(guarded: Server, authorization: str | None, target: str) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    try:
        response = guarded.raw("GET", target, headers)
    except (ConnectionError, OSError):
        # a NUL in a header may be refused at the HTTP parser: fine, as long as nothing leaks
        assert "\x00" in (authorization or "")
        return
    if "\x00" in (authorization or "") and response.status_code == 400:
        return
    assert response.status_code == 401, (response.status_code, response.content[:200])
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"].startswith("application/problem+json")
    assert b'"job_id"' not in response.content
    assert guarded.get("/livez").status_code == 200


def test_the_token_opens_the_api_and_probes_stay_open(guarded: Server) -> None:
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert guarded.get("/api/v2/jobs/j", headers=good).status_code == 200
    assert guarded.get("/api/v2/jobs/j", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    for path in ["/livez", "/healthz", "/readyz", "/metrics", "/openapi.json"]:
        assert guarded.get(path).status_code == 200, path
    no_server_errors(guarded)
