"""The floor of a change stream's fan-out: `python -m bench.fanout_floor N EVENTS` holds N
loopback connections on uvloop (pinned to the server core, a plain reader process on the
client core) and writes one event-sized chunk to each, EVENTS times, 0.1 s apart, as the
watch benchmark's events are sent; it prints the CPU microseconds per write. That is a send()
per stream per event, which no server can skip: the service's CPU per event per stream is read
against it (bench/watch.py)."""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
import time

import uvloop

from bench.server import CLIENT_CORE, ROOT, SERVER_CORE

# A chunk of the size of the benchmark's events (a summary of ~300 B in its chunked framing).
CHUNK = b"14a\r\n" + b'{"type":"MODIFIED","revision":"r","object":{"job_id":"' + b"a" * 256 + b'"}}\n\r\n'
READER = """
import selectors, socket, sys
count, expected = int(sys.argv[1]), int(sys.argv[2])
selector = selectors.DefaultSelector()
for _ in range(count):
    sock = socket.create_connection(("127.0.0.1", int(sys.argv[3])))
    sock.setblocking(False)
    selector.register(sock, selectors.EVENT_READ)
print("open", flush=True)
received = 0
while received < expected:
    events = selector.select(30)
    if not events:
        sys.exit("no data for 30 s")
    for key, _ in events:
        received += len(key.fileobj.recv(65536))
print("done", flush=True)
"""


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _run(count: int, events: int) -> float:
    transports: list[asyncio.Transport] = []

    class Sink(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transports.append(transport)  # type: ignore[arg-type]

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    argv = ["taskset", "-c", str(CLIENT_CORE), sys.executable, "-c", READER, str(count),
            str(count * events * len(CHUNK)), str(port)]  # fmt: skip
    reader = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert reader.stdout is not None
    try:
        await loop.run_in_executor(None, reader.stdout.readline)
        deadline = time.monotonic() + 60
        while len(transports) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)
        before = _cpu_s()
        for _ in range(events):
            for transport in transports:
                transport.write(CHUNK)
            await asyncio.sleep(0.1)
        spent = _cpu_s() - before
        if (await loop.run_in_executor(None, reader.stdout.readline)).strip() != "done":
            raise RuntimeError("the reader did not receive every write")
    finally:
        for transport in transports:
            transport.close()
        server.close()
        reader.kill()
        reader.wait(10)
    return spent / (count * events) * 1e6


def main() -> None:
    count, events = int(sys.argv[1]), int(sys.argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"{uvloop.run(_run(count, events)):.3f}")


def measure(count: int, events: int) -> float:
    """Microseconds of CPU per write, from a process pinned to the server core."""
    argv = ["taskset", "-c", str(SERVER_CORE), sys.executable, "-m", "bench.fanout_floor", str(count), str(events)]
    output = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True).stdout
    return float(output.split()[-1])


if __name__ == "__main__":
    main()
