"""The benchmark's streaming clients: `python -m bench.streams` opens many change streams (or
many pollers) on one asyncio loop, runs on the load generator's core, and talks to the bench
through lines on stdin and stdout:

    -> {"ready": N}               every stream is open (its response head and first event read)
    <- "go"                       the bench wants the writes (or the polling) to begin
    -> {"done": {...figures}}     results, once the writes are done and their events arrived

Receipt times are taken in `data_received` with no parsing (the parse happens after the run),
so that 1,000 streams receiving the same event measure the server, not this client.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

import orjson

HOST = "127.0.0.1"


class StreamClient(asyncio.Protocol):
    def __init__(self, request: bytes, opened: asyncio.Future[None]) -> None:
        self.request = request
        self.opened = opened
        self.times: list[float] = []
        self.offsets: list[int] = []  # where each chunk starts in `data`
        self.data = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.times.append(time.time())
        self.offsets.append(len(self.data))
        self.data += data
        if not self.opened.done() and b"\r\n\r\n" in self.data:  # the head: the stream is attached
            self.opened.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"stream closed before it opened: {exc}"))

    def received_at(self, marker: bytes, start: int = 0) -> float | None:
        """When `marker` first arrived, None if it never did."""
        index = self.data.find(marker, start)
        if index < 0:
            return None
        chunk = bisect.bisect_right(self.offsets, index + len(marker) - 1) - 1
        return self.times[chunk]


def write_session(folder: Path, job_id: str, document: dict[str, Any]) -> float:
    """Temp file + rename; the moment of the rename (what the watcher sees)."""
    body = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
    temp = folder / f".{job_id}.{os.getpid()}.tmp"
    temp.write_bytes(body)
    moment = time.time()
    os.replace(temp, folder / f"{job_id}.json")
    return moment


async def open_streams(port: int, targets: list[str], batch: int = 200) -> list[StreamClient]:
    loop = asyncio.get_running_loop()
    clients: list[StreamClient] = []
    for start in range(0, len(targets), batch):  # in batches: the listen backlog is finite
        opened = []
        for target in targets[start : start + batch]:
            future: asyncio.Future[None] = loop.create_future()
            request = f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
            _, client = await loop.create_connection(lambda r=request, f=future: StreamClient(r, f), HOST, port)
            clients.append(client)
            opened.append(future)
        await asyncio.wait_for(asyncio.gather(*opened), 60)
    return clients


def report(message: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(message).decode() + "\n")
    sys.stdout.flush()


async def wait_go() -> None:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        raise SystemExit(f"expected 'go', got {line!r}")


async def lag(options: argparse.Namespace) -> dict[str, Any]:
    """Stream lag: `count` streams (collection, or all on one job), `events` writes spaced
    `interval` s; for every (event, stream), the time from the rename to its arrival."""
    folder = Path(options.folder)
    if options.kind == "collection":
        targets = ["/api/v2/jobs?watch=true&revision=" + options.revision] * options.count
    else:
        targets = [f"/api/v2/jobs/{options.job}?watch=true"] * options.count
    clients = await open_streams(options.port, targets)
    starts = [len(client.data) for client in clients]
    report({"ready": len(clients)})
    await wait_go()
    written: list[tuple[bytes, float]] = []
    base = orjson.loads((folder / f"{options.job}.json").read_bytes()) if options.kind == "job" else {}
    for seq in range(options.events):
        if options.kind == "collection":
            job_id = f"lag-{seq:05d}"
            moment = write_session(folder, job_id, {"job_id": job_id, "status": "running", "user_id": "bench"})
            written.append((f'"job_id":"{job_id}"'.encode(), moment))
        else:
            moment = write_session(folder, options.job, {**base, "bench_seq": f"seq-{seq:05d}"})
            written.append((f'"bench_seq": "seq-{seq:05d}"'.encode(), moment))
        await asyncio.sleep(options.interval)
    deadline = time.monotonic() + 30
    last_marker = written[-1][0]
    while time.monotonic() < deadline and not all(last_marker in client.data for client in clients):
        await asyncio.sleep(0.05)
    lags: list[float] = []
    missing = 0
    for client, start in zip(clients, starts, strict=True):
        for marker, moment in written:
            arrived = client.received_at(marker, start)
            if arrived is None:
                missing += 1  # job streams may skip a version superseded before it was sent
            else:
                lags.append(arrived - moment)
    for client in clients:
        assert client.transport is not None
        client.transport.close()
    return {"lags_s": lags, "missing": missing, "streams": len(clients), "events": len(written)}


async def idle(options: argparse.Namespace) -> dict[str, Any]:
    """`count` idle collection streams; on "go", `events` writes spaced `interval` s that every
    stream receives; then hold the streams until stdin says "close"."""
    folder = Path(options.folder)
    targets = ["/api/v2/jobs?watch=true&revision=" + options.revision] * options.count
    clients = await open_streams(options.port, targets)
    report({"ready": len(clients)})
    await wait_go()
    for seq in range(options.events):
        job_id = f"idle-{seq:05d}"
        write_session(folder, job_id, {"job_id": job_id, "status": "running", "user_id": "bench"})
        await asyncio.sleep(options.interval)
    marker = f'"job_id":"idle-{options.events - 1:05d}"'.encode()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(marker in client.data for client in clients):
        await asyncio.sleep(0.05)
    received = sum(marker in client.data for client in clients)
    report({"delivered": received})
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "close"
    for client in clients:
        assert client.transport is not None
        client.transport.close()
    return {"streams": len(clients), "received_last": received}


class Poller(asyncio.Protocol):
    """A polite poller: GET its job once a second on one keep-alive connection, with
    If-None-Match once it has the ETag (mostly a 304)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.etag: bytes | None = None
        self.buffer = bytearray()
        self.answered = asyncio.Event()
        self.transport: asyncio.Transport | None = None
        self.responses = 0
        self.changes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def poll(self) -> None:
        assert self.transport is not None
        condition = b"If-None-Match: " + self.etag + b"\r\n" if self.etag else b""
        self.transport.write(b"GET /api/v2/jobs/%s HTTP/1.1\r\nHost: h\r\n%s\r\n" % (self.job_id.encode(), condition))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                elif line.startswith(b"etag:"):
                    etag = line.split(b":", 1)[1].strip()
                    if etag != self.etag:
                        self.changes += self.etag is not None
                        self.etag = etag
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            self.responses += 1
            self.answered.set()


async def poll(options: argparse.Namespace) -> dict[str, Any]:
    """`count` pollers, each on its own job, once a second each, for `seconds`."""
    loop = asyncio.get_running_loop()
    pollers = []
    for job_id in options.jobs.split(","):
        _, poller = await loop.create_connection(lambda j=job_id: Poller(j), HOST, options.port)
        pollers.append(poller)
    report({"ready": len(pollers)})
    await wait_go()

    async def run(poller: Poller, offset: float, until: float) -> None:
        await asyncio.sleep(offset)
        while time.monotonic() < until:
            poller.answered.clear()
            started = time.monotonic()
            poller.poll()
            await asyncio.wait_for(poller.answered.wait(), 30)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))

    until = time.monotonic() + options.seconds
    rng = random.Random(5)
    await asyncio.gather(*(run(poller, rng.random(), until) for poller in pollers))
    return {"responses": sum(p.responses for p in pollers), "changes_seen": sum(p.changes for p in pollers)}


async def watch_jobs(options: argparse.Namespace) -> dict[str, Any]:
    """`count` job streams, each on its own job, held for `seconds`."""
    clients = await open_streams(options.port, [f"/api/v2/jobs/{job}?watch=true" for job in options.jobs.split(",")])
    report({"ready": len(clients)})
    await wait_go()
    await asyncio.sleep(options.seconds)
    events = sum(bytes(client.data).count(b'"type":"MODIFIED"') for client in clients)
    for client in clients:
        assert client.transport is not None
        client.transport.close()
    return {"modified_events": events}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.streams")
    parser.add_argument("mode", choices=["lag", "idle", "poll", "watch-jobs"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--folder", default="")
    parser.add_argument("--kind", choices=["collection", "job"], default="collection")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--revision", default="")
    parser.add_argument("--job", default="")
    parser.add_argument("--jobs", default="")
    parser.add_argument("--seconds", type=float, default=30.0)
    options = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    modes = {"lag": lag, "idle": idle, "poll": poll, "watch-jobs": watch_jobs}
    result = asyncio.run(modes[options.mode](options))
    report({"done": result})


if __name__ == "__main__":
    main()
