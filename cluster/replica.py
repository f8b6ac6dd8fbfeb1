"""One replica of the service: `python -m app` on a loopback port of its own, which it keeps
across restarts (it is the address HAProxy checks)."""

from __future__ import annotations

import http.client
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from cluster.process import Child, ClusterError, Timeout, environment, wait_for

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Replica(Child):
    def __init__(
        self,
        name: str,
        sessions_dir: Path,
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        prefix: tuple[str, ...] = (),
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        settings = {"SESSIONS_DIR": str(sessions_dir), "PYTHONUNBUFFERED": "1", **(env or {})}
        argv = [*prefix, sys.executable, "-m", "app", "--host", HOST, "--port", str(self.port)]
        # Settings come from `env` alone, never from whoever runs the cluster by accident.
        super().__init__(name, argv, environment(("SESSIONS_", "PROMETHEUS_"), settings), log_dir)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def ready_status(self) -> int | None:
        """/readyz's status; None while the port does not answer."""
        connection = http.client.HTTPConnection(HOST, self.port, timeout=2)
        try:
            connection.request("GET", "/readyz")
            return connection.getresponse().status
        except OSError:
            return None
        finally:
            connection.close()

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise ClusterError(f"{self.name} exited with status {self.process.returncode}:\n{self.log_tail()}")
            return self.ready_status() == 200

        try:
            wait_for(ready, timeout, f"{self.name} to be ready", interval=0.05)
        except Timeout as exc:
            raise Timeout(f"{exc}\n{self.log_tail()}") from None
