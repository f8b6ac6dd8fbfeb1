"""The service on a network volume, polling (docs/network-volumes.md): time to ready against
the same folder on the local disk in the same run, /livez during the local warm-up, idle CPU of
the service, the FUSE client and the file server together, and freshness for writers that know
nothing of the service (temp file and rename, and in place) on unfinished sessions, on the
network mount and on the local disk.

The network volume is tests/support/netfs.py's stand-in: a loopback sshd, sshfs with a 3 s attribute
cache. The service runs with no setting but SESSIONS_DIR (so `auto` must choose).

    python -m bench.netpoll [--sessions 100000] [--unfinished 0.02] [--changes 60] [--idle-s 62]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import probe, server
from bench.generate import job_ids, make_document, render
from bench.report import percentile
from tests.support import netfs

TICK = os.sysconf("SC_CLK_TCK")


def generate(folder: Path, count: int, unfinished: float) -> list[str]:
    """`count` sessions, the first `unfinished` share running, the rest completed; returns the
    unfinished ids."""
    rng = random.Random(7)
    live = []
    for index, job_id in enumerate(job_ids(count, 11)):
        document = make_document(rng, job_id)
        running = index < count * unfinished
        document["status"] = "running" if running else "completed"
        (folder / f"{job_id}.json").write_bytes(render(document))
        if running:
            live.append(job_id)
    return live


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def volume_pids(volume: netfs.NetworkFolder) -> list[int]:
    """sshfs, the ssh it talks through (sshfs starts it detached, outside its process tree)
    and the file server's processes."""
    found = set(volume.pids())
    marker = str(volume.base).encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.add(int(entry))
            except OSError:
                continue
    found.discard(os.getpid())
    return sorted(found)


class ChangeWatch(threading.Thread):
    """A collection watch of unfinished sessions: when each (job id, updated_at) arrived."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.seen: dict[tuple[str, str], float] = {}
        self.started = threading.Event()
        self.stop = False

    def run(self) -> None:
        with (
            httpx.Client(timeout=httpx.Timeout(10, read=None)) as client,
            client.stream("GET", f"{self.base_url}/api/v2/jobs?watch=true&include_saved=false") as response,
        ):
            for line in response.iter_lines():
                if self.stop:
                    return
                event = orjson.loads(line)
                if event["type"] == "BOOKMARK":
                    self.started.set()
                    continue
                summary = event.get("object") or {}
                self.seen[(summary.get("job_id"), summary.get("updated_at"))] = time.monotonic()


def stamps() -> Iterator[str]:
    moment = datetime(2030, 1, 1, tzinfo=UTC)
    while True:
        moment += timedelta(milliseconds=1)
        yield moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


STAMPS = stamps()  # one sequence for the whole run: every change is told apart from the others


def freshness(
    base_url: str, folder: Path, live: list[str], changes: int, gap_s: float, in_place: bool
) -> dict[str, Any]:
    watch = ChangeWatch(base_url)
    watch.start()
    if not watch.started.wait(60):
        raise RuntimeError("the watch did not start")
    rng = random.Random()
    written: dict[tuple[str, str], float] = {}
    clock = STAMPS
    for _ in range(changes):
        job_id = rng.choice(live)
        path = folder / f"{job_id}.json"
        document = orjson.loads(path.read_bytes())
        document["updated_at"] = stamp = next(clock)
        data = render(document)
        if in_place:
            with open(path, "wb") as stream:
                stream.write(data)
        else:
            temporary = folder / f".{job_id}.json.tmp"
            temporary.write_bytes(data)
            os.replace(temporary, path)
        written[(job_id, stamp)] = time.monotonic()
        time.sleep(gap_s)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(key in watch.seen for key in written):
        time.sleep(0.05)
    watch.stop = True
    delays = [watch.seen[key] - at for key, at in written.items() if key in watch.seen]
    return {
        "changes": changes,
        "missed": changes - len(delays),
        "p50_ms": percentile(delays, 50) * 1000 if delays else None,
        "p99_ms": percentile(delays, 99) * 1000 if delays else None,
        "max_ms": max(delays) * 1000 if delays else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.netpoll", description=__doc__)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--unfinished", type=float, default=0.02)
    parser.add_argument("--changes", type=int, default=60, help="changes per writer kind")
    parser.add_argument("--gap-s", type=float, default=0.25, help="seconds between changes")
    parser.add_argument("--idle-s", type=float, default=62.0, help="idle CPU window (one full rescan is 60 s)")
    options = parser.parse_args(argv)
    results: dict[str, Any] = {"settings": vars(options)}
    work = Path(tempfile.mkdtemp(prefix="netpoll-"))
    logs = work / "logs"
    logs.mkdir()
    try:
        with netfs.mounted(work / "volume") as volume:
            print(f"generating {options.sessions:,} sessions...", file=sys.stderr)
            live = generate(volume.server_path, options.sessions, options.unfinished)
            local = work / "local"
            local.mkdir()
            for name in os.listdir(volume.server_path):
                os.link(volume.server_path / name, local / name)

            with server.service(local, logs, name="local") as srv:
                poller = probe.LivezPoller(srv.port, 200)
                poller.start()
                try:
                    local_ready = srv.wait_ready(deadline_s=600, interval_s=0.01)
                finally:
                    livez = poller.finish()
                results["local"] = {
                    "ready_s": local_ready,
                    "livez_p99_ms": percentile(livez, 99),
                    "livez_samples": len(livez),
                }
                print(f"local: ready {local_ready:.2f} s, /livez p99 {percentile(livez, 99):.1f} ms", file=sys.stderr)
                results["local"]["rename"] = freshness(srv.base_url, local, live, options.changes // 2, 0.1, False)
                results["local"]["in_place"] = freshness(srv.base_url, local, live, options.changes // 2, 0.1, True)
                print(f"local freshness: {results['local']['rename']} {results['local']['in_place']}", file=sys.stderr)

            with server.service(volume.mount_path, logs, name="network") as srv:
                poller = probe.LivezPoller(srv.port, 50)
                poller.start()
                try:
                    ready = srv.wait_ready(deadline_s=900, interval_s=0.05)
                finally:
                    livez = poller.finish()
                mode = probe.metric(srv.port, "sessions_poll_hot_files")
                results["network"] = {
                    "ready_s": ready,
                    "ready_vs_local": ready / local_ready,
                    "livez_p99_ms": percentile(livez, 99),
                    "hot_files": mode,
                }
                print(f"network: ready {ready:.2f} s ({ready / local_ready:.1f}x local)", file=sys.stderr)
                time.sleep(5)  # the first periods after the warm-up
                volume_side = volume_pids(volume)
                before = cpu_seconds([srv.pid]), cpu_seconds(volume_side)
                started = time.monotonic()
                time.sleep(options.idle_s)
                took = time.monotonic() - started
                service_idle = (cpu_seconds([srv.pid]) - before[0]) / took
                volume_idle = (cpu_seconds(volume_side) - before[1]) / took
                results["network"]["idle_cores"] = service_idle + volume_idle
                results["network"]["idle_cores_service"] = service_idle
                results["network"]["idle_cores_volume"] = volume_idle
                print(
                    f"network: idle {service_idle + volume_idle:.3f} cores over {took:.0f} s "
                    f"(service {service_idle:.3f}, sshfs + ssh + sshd {volume_idle:.3f})",
                    file=sys.stderr,
                )
                results["network"]["rename"] = freshness(
                    srv.base_url, volume.server_path, live, options.changes, options.gap_s, False
                )
                print(f"network rename: {results['network']['rename']}", file=sys.stderr)
                results["network"]["in_place"] = freshness(
                    srv.base_url, volume.server_path, live, options.changes, options.gap_s, True
                )
                print(f"network in place: {results['network']['in_place']}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
