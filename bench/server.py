"""Server processes pinned to core 0: start, wait for readiness with a deadline, stop with SIGTERM."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

SERVER_CORE = 0
CLIENT_CORE = 1
HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent

# The service runs with its defaults (access log on, JSON, stdout to a file as a container runtime
# takes it) except a short graceful timeout, so that stopping it does not stall the run.
SERVICE_ENV = {"SESSIONS_GRACEFUL_TIMEOUT_S": "5"}
# The same server without access lines: what the access log costs is the ratio of the two.
ACCESS_LOG_OFF = {"SESSIONS_LOG_LEVEL": "warning"}


class ServerError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def pin_client() -> None:
    """Pin this process (and the threads it starts later) to the load generator's core."""
    os.sched_setaffinity(0, {CLIENT_CORE})


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    _log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ServerError(f"{self.name} is not running")
        return self.process.pid

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        argv = ["taskset", "-c", str(SERVER_CORE), *self.command, "--host", HOST, "--port", str(self.port)]
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def ready_status(self) -> int | None:
        """/readyz's status, None when the port does not answer yet."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status
        except OSError:
            return None
        finally:
            conn.close()

    def wait_ready(self, deadline_s: float = 300.0, interval_s: float = 0.01) -> float:
        """Poll /readyz until 200; return seconds from process start to ready."""
        limit = time.perf_counter() + deadline_s
        while time.perf_counter() < limit:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"{self.name} exited with status {self.process.returncode}: {self.log_tail()}")
            if self.ready_status() == 200:
                return time.perf_counter() - self.started_at
            time.sleep(interval_s)
        raise ServerError(f"{self.name} not ready within {deadline_s:.0f} s: {self.log_tail()}")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ServerError(f"no VmRSS for {self.name}")

    def stop(self, timeout_s: float = 15.0) -> int | None:
        if self.process is None:
            return None
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return process.returncode

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _env(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT)
    return env


def service(folder: Path, logs: Path, name: str = "service", **settings: str) -> Server:
    env = _env({"SESSIONS_DIR": str(folder), **SERVICE_ENV, **settings})
    return Server(name, [sys.executable, "-m", "app"], env, logs / f"{name}.log")


def reference(kind: str, folder: Path, logs: Path) -> Server:
    env = _env({"SESSIONS_DIR": str(folder)})
    return Server(kind, [sys.executable, "-m", "bench.serve_ref", kind], env, logs / f"{kind}.log")
