"""Shutdown under load: on SIGTERM readiness turns 503 at once, every request the server accepted
gets its full response (slow readers of large bodies included), and the process exits 0."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support import Server, encode, session_doc, wait_until

BIG = encode(session_doc("big", payload="z" * 3_000_000))


def read_response(sock: socket.socket, data: bytes = b"", pace_s: float = 0.0) -> bytes:
    """Read one response (Content-Length framed) to its end, slowly if asked: a slow client."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
        if pace_s:
            time.sleep(pace_s)  # the client's reading pace, not synchronisation
    return head + b"\r\n\r\n" + body


@pytest.mark.slow  # the service under load for seconds, twice
@pytest.mark.timeout(120)
@pytest.mark.parametrize("delay", ["0", "6"], ids=["no delay", "6 s delay"])
def test_sigterm_under_load(sessions_dir: Path, serve: Callable[..., Server], delay: str) -> None:
    (sessions_dir / "big.json").write_bytes(BIG)
    server = serve(sessions_dir, env={"SESSIONS_SHUTDOWN_DELAY_S": delay})
    host, port = server.base_url.removeprefix("http://").split(":")
    address = (host, int(port))

    # slow readers: requests accepted and answered in part when the signal comes
    slow = [socket.create_connection(address, timeout=30) for _ in range(4)]
    for sock in slow:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.sendall(b"GET /api/v2/jobs/big HTTP/1.1\r\nHost: x\r\n\r\n")
    begun = [sock.recv(16) for sock in slow]
    assert all(start.startswith(b"HTTP/1.1 200") for start in begun), begun  # the responses have begun

    # and a steady load of fast clients
    stop = threading.Event()
    broken: list[str] = []
    completed = [0]
    drain_ends = [float("inf")]  # until then the server must keep accepting and answering

    def hammer() -> None:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            for _ in range(100_000):
                if stop.is_set():
                    return
                started = False
                try:
                    with client.stream("GET", "/api/v2/jobs/big") as response:
                        started = True
                        body = response.read()
                except httpx.HTTPError as exc:
                    # Before a response began: not accepted (the listener is closed), or an idle
                    # keep-alive connection closed as the next request was on its way, which
                    # the kernel reports as a reset: a GET the client may retry (RFC 9112
                    # 9.3.1). After it began, a broken response.
                    refused = isinstance(exc, httpx.ConnectError | httpx.RemoteProtocolError | httpx.ReadError)
                    if started or not refused:
                        broken.append(repr(exc))
                    elif time.monotonic() < drain_ends[0] - 0.25:
                        broken.append(f"refused during the shutdown delay: {exc!r}")
                    return
                if response.status_code != 200 or body != BIG:
                    broken.append(f"{response.status_code}, {len(body)} bytes")
                completed[0] += 1

    hammers = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in hammers:
        thread.start()
    try:
        wait_until(lambda: completed[0] > 10, 20, what="load")
        signalled = time.monotonic()
        drain_ends[0] = signalled + float(delay)
        server.process.send_signal(signal.SIGTERM)
        if delay != "0":
            with httpx.Client(base_url=server.base_url, timeout=5) as probe:
                # "at once": within the first half of the delay (a loaded machine may take a moment)
                ready = wait_until(
                    lambda: (r := probe.get("/readyz")).status_code == 503 and r, float(delay) / 2, what="readiness off"
                )
                assert ready.json() == {"status": "draining"}
                assert time.monotonic() < drain_ends[0]
                live = probe.get("/livez")
                assert live.status_code == 200  # still serving while draining
                assert live.headers["connection"] == "close"  # and moving keep-alive clients off
        # every accepted request, however slowly read, gets its whole response
        for sock, start in zip(slow, begun, strict=True):
            response = read_response(sock, start, pace_s=0.001)
            assert response.endswith(BIG[-1000:]) and len(response) > len(BIG), len(response)
        assert server.process.wait(30) == 0
    finally:
        stop.set()
        for thread in hammers:
            thread.join(15)
        for sock in slow:
            sock.close()
    assert not broken, broken[:5]
    messages = [entry["message"] for entry in server.json_logs()]
    assert "stopped" in messages  # the lifespan shutdown ran: watcher and threads stopped
