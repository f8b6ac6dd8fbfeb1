"""Test support: realistic session writers, a real server runner, and waits with deadlines."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson

REPO = Path(__file__).resolve().parents[2]
# The statuses docs/contract.md#files lists as seen in the wild; the last three are the finished ones.
STATUSES = (
    *("pending", "running", "pending_hitl", "pending_user_input", "pending_review"),
    *("completed", "failed", "cancelled"),
)
T = TypeVar("T")


# --- waiting -------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.01, what: str = "") -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except (httpx.HTTPError, OSError, ValueError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}: {last_error}")
        time.sleep(interval)


async def eventually(condition: Callable[[], T | Awaitable[T]], timeout: float = 10.0, what: str = "") -> T:
    """`wait_until` for async tests: poll `condition` (plain or async) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(0.01)


# --- documents and writers -----------------------------------------------------------------------


def session_doc(
    job_id: str,
    status: str = "running",
    user_id: str | None = "user-1",
    updated_at: str | None = "2024-05-01T12:00:00Z",
    created_at: str | None = "2024-05-01T11:00:00Z",
    **extra: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {"job_id": job_id, "status": status}
    if user_id is not None:
        doc["user_id"] = user_id
    if created_at is not None:
        doc["created_at"] = created_at
    if updated_at is not None:
        doc["updated_at"] = updated_at
    doc.update(extra)
    return doc


def encode(doc: Mapping[str, Any]) -> bytes:
    # Writers in the wild pretty-print.
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def write_in_place(path: Path, data: bytes) -> None:
    """Truncate and write, as a naive writer does: a reader can see it empty or half-written."""
    with open(path, "wb") as stream:
        stream.write(data)


def write_in_chunks(path: Path, data: bytes, chunks: int = 4, pause: float = 0.005) -> None:
    """A slow in-place writer: truncate, then the document in pieces with pauses between."""
    size = max(1, len(data) // chunks)
    with open(path, "wb") as stream:
        for start in range(0, len(data), size):
            stream.write(data[start : start + size])
            stream.flush()
            os.fsync(stream.fileno())
            time.sleep(pause)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a temporary file and rename it into place: readers see old or new, nothing between."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def put_session(folder: Path, job_id: str, **fields: Any) -> dict[str, Any]:
    doc = session_doc(job_id, **fields)
    write_atomic(folder / f"{job_id}.json", encode(doc))
    return doc


# --- a real server -------------------------------------------------------------------------------


def listed(server: Server, query: str = "") -> dict[str, dict[str, Any]]:
    """The first list page (up to 1,000 summaries) by job id, in list order: `in` asks whether
    a job is listed, `list(...)` gives the order, and the values are what a mirror must equal."""
    response = server.get(f"/api/v2/jobs?limit=1000{query}")
    assert response.status_code == 200, response.text
    return {item["job_id"]: item for item in response.json()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RawResponse:
    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return orjson.loads(self.content)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.base_url, timeout=10.0)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def raw(self, method: str, target: str, headers: Mapping[str, str] | None = None) -> RawResponse:
        """Send a request target exactly as given (httpx would normalise `..` and the like)."""
        host, port = self.base_url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            connection.putrequest(method, target, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            return RawResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    def logs(self) -> list[str]:
        """The complete lines written so far: the server writes its log in large writes, and a
        read may see the last one half-way."""
        text = self.log_path.read_text(errors="replace")
        return text[: text.rfind("\n") + 1].splitlines()

    def json_logs(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.logs():
            if line.startswith("{"):
                entries.append(orjson.loads(line))
        return entries

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def server_env(sessions_dir: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    base = {key: value for key, value in os.environ.items() if not key.startswith(("SESSIONS_", "PROMETHEUS_"))}
    base.update(
        {
            "SESSIONS_DIR": str(sessions_dir),
            "SESSIONS_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
    )
    base.update(env or {})
    return base


def start_server(
    sessions_dir: Path,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
    wait_ready: bool = True,
    timeout: float = 60.0,
    prefix: tuple[str, ...] = (),
    port: int | None = None,
) -> Server:
    """With `port`, on that port (a restart where the old process listened), else a free one."""
    port = port if port is not None else free_port()
    log_path = log_dir / f"server-{port}.log"
    restarts = 1
    while log_path.exists():  # a restart on the same port keeps the log of the one before
        log_path = log_dir / f"server-{port}-{restarts}.log"
        restarts += 1
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=REPO,
            env=server_env(sessions_dir, env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log_path)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n" + "\n".join(server.logs()[-30:]))
        return server.get("/livez").status_code == 200

    wait_until(up, timeout, what="the server to listen")
    if wait_ready:
        wait_until(lambda: server.get("/readyz").status_code == 200, timeout, what="readiness")
    return server
