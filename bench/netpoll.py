"""What the network-volume part (bench/netvolume.py, `python -m bench --only netfs`) measures
with: the sessions it generates, the CPU of a set of processes, the processes of the mount, a
collection watch that times each change's arrival, and freshness for one kind of writer.

Freshness is the time from a write's return to the arrival of its new `updated_at` on a
collection watch (`include_saved=false`). A writer is a function that saves a document's bytes
under a job id; the writers that know nothing of the service are here (temp file and rename, in
place), the one that announces is netvolume.py's.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.generate import job_ids, make_document, render
from bench.report import percentile
from tests.support import netfs

TICK = os.sysconf("SC_CLK_TCK")
# How long after the last change the watch may still bring one: beyond it a change is missed.
SETTLE_S = 30.0

Write = Callable[[str, bytes], None]


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


def renaming(folder: Path) -> Write:
    """A writer that knows nothing of the service: a temp file in the folder, then a rename."""

    def write(job_id: str, data: bytes) -> None:
        temporary = folder / f".{job_id}.json.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, folder / f"{job_id}.json")

    return write


def in_place(folder: Path) -> Write:
    """A writer that knows nothing of the service and rewrites the file where it is."""

    def write(job_id: str, data: bytes) -> None:
        with open(folder / f"{job_id}.json", "wb") as stream:
            stream.write(data)

    return write


def freshness(
    base_url: str, folder: Path, live: list[str], changes: int, gap_s: float, write: Write, settle_s: float = SETTLE_S
) -> dict[str, Any]:
    """`changes` changes to random unfinished sessions of `folder`, `gap_s` apart, each a new
    `updated_at` saved by `write`: p50/p99/max of their arrival on a collection watch, and how
    many never arrived within `settle_s` of the last (with their job ids and stamps).

    A session is changed again only once its last change arrived, while another one is left:
    the service may skip a version that a newer one replaced before it was read, which is not a
    miss. Where that happens anyway (few unfinished sessions), a change counts as arrived when
    it or a later change of the same session arrived."""
    watch = ChangeWatch(base_url)
    watch.start()
    if not watch.started.wait(60):
        raise RuntimeError("the watch did not start")
    rng = random.Random()
    written: list[tuple[str, str, float]] = []
    last: dict[str, tuple[str, str]] = {}
    for _ in range(changes):
        settled = [job_id for job_id in live if job_id not in last or last[job_id] in watch.seen]
        job_id = rng.choice(settled or live)
        document = orjson.loads((folder / f"{job_id}.json").read_bytes())
        document["updated_at"] = stamp = next(STAMPS)
        write(job_id, render(document))
        written.append((job_id, stamp, time.monotonic()))
        last[job_id] = (job_id, stamp)
        time.sleep(gap_s)
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline and not all(key in watch.seen for key in last.values()):
        time.sleep(0.05)
    watch.stop = True
    delays: list[float] = []
    missed: list[tuple[str, str]] = []
    for index, (job_id, stamp, at) in enumerate(written):
        arrivals = [
            watch.seen[(later, later_stamp)]
            for later, later_stamp, _ in written[index:]
            if later == job_id and (later, later_stamp) in watch.seen
        ]
        if arrivals:
            delays.append(min(arrivals) - at)
        else:
            missed.append((job_id, stamp))
    return {
        "changes": changes,
        "missed": len(missed),
        "missed_changes": missed,
        "p50_ms": percentile(delays, 50) * 1000 if delays else None,
        "p99_ms": percentile(delays, 99) * 1000 if delays else None,
        "max_ms": max(delays) * 1000 if delays else None,
    }
