"""Small HTTP clients for the probes: a fixed-rate /livez poller thread, one-shot GETs."""

from __future__ import annotations

import http.client
import threading
import time

from bench.server import HOST


def get(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def metric(port: int, name: str) -> float | None:
    """One unlabelled sample from /metrics, None when absent."""
    status, _, body = get(port, "/metrics")
    if status != 200:
        return None
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


class LivezPoller(threading.Thread):
    """GET /livez at `hz` on one keep-alive connection, recording each answer's latency (ms).
    Refused connections (the port not open yet) are retried and not recorded; a request that
    fails once the port answered counts as a failure."""

    def __init__(self, port: int, hz: float = 200.0, path: str = "/livez", max_seconds: float = 600.0) -> None:
        super().__init__(name="livez-poller", daemon=True)
        self.port, self.interval, self.path, self.max_seconds = port, 1.0 / hz, path, max_seconds
        self.latencies_ms: list[float] = []
        self.failures = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        deadline = time.perf_counter() + self.max_seconds
        next_at = time.perf_counter()
        while not self.stop_event.is_set() and time.perf_counter() < deadline:
            if conn is None:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
            started = time.perf_counter()
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except ConnectionRefusedError:
                conn.close()
                conn = None
                self.stop_event.wait(0.005)
                continue
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = None
                ok = False
            if ok:
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
            else:
                self.failures += 1
            next_at = max(next_at + self.interval, time.perf_counter())
            self.stop_event.wait(max(0.0, next_at - time.perf_counter()))
        if conn is not None:
            conn.close()

    def finish(self) -> list[float]:
        self.stop_event.set()
        self.join(10)
        return self.latencies_ms
