"""The network-volume part (`python -m bench --only netfs`, or alone): the service on a network
volume with no setting but SESSIONS_DIR, against the same folder on the local disk in the same
run: which mode `auto` chose, time to ready (and its ratio to the local disk's), idle CPU of the
service, the FUSE client and the file server together while a writer's journal is followed, and
freshness on unfinished sessions for (a) a writer that knows nothing of the service (temp file
and rename: bench/netpoll.py's) and (b) `SessionWriter`, which announces (docs/network-volumes.md).

The network volume is tests/netfs.py's stand-in (a loopback sshd, sshfs with a 3 s attribute
cache); the service runs with no setting but SESSIONS_DIR, so `auto` chooses its mode. Changes
are made to unfinished sessions on the file server's side by a `SessionWriter` (another machine,
as far as the mount knows), created before the service starts; each change carries a new
`updated_at`, and its freshness is the time from the save's return to its arrival on a
collection watch.

    python -m bench.netvolume [--sessions 100000] [--unfinished 0.02] [--changes 200]
                              [--gap-s 0.05] [--idle-s 20]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from sessions_client import SessionWriter

from bench import probe, report, server
from bench.netpoll import STAMPS, ChangeWatch, cpu_seconds, freshness, generate, volume_pids
from bench.report import percentile
from tests import netfs


def announced_freshness(
    base_url: str, writer: SessionWriter, live: list[str], changes: int, gap_s: float
) -> dict[str, Any]:
    watch = ChangeWatch(base_url)
    watch.start()
    if not watch.started.wait(60):
        raise RuntimeError("the watch did not start")
    rng = random.Random(3)
    written: dict[tuple[str, str], float] = {}
    for _ in range(changes):
        job_id = rng.choice(live)
        document = orjson.loads((writer.folder / f"{job_id}.json").read_bytes())
        document["updated_at"] = stamp = next(STAMPS)
        writer.save(job_id, orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
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


def watch_mode(port: int) -> str:
    _, _, body = probe.get(port, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith("sessions_watch_mode{"):
            return line.rsplit(" ", 1)[0].removeprefix("sessions_watch_mode")
    return "unknown"


def run(sessions: int, unfinished: float, changes: int, gap_s: float, idle_s: float, work: Path) -> dict[str, Any]:
    logs = work / "logs"
    logs.mkdir(parents=True)
    results: dict[str, Any] = {
        "settings": {"sessions": sessions, "unfinished": unfinished, "changes": changes, "gap_s": gap_s},
        "idle_s": idle_s,
    }
    with netfs.mounted(work / "volume") as volume:
        print(f"generating {sessions:,} sessions...", file=sys.stderr)
        live = generate(volume.server_path, sessions, unfinished)
        local = work / "local"
        local.mkdir()
        for name in os.listdir(volume.server_path):
            os.link(volume.server_path / name, local / name)

        local_writer = SessionWriter(local)
        with server.service(local, logs, name="local") as srv:
            local_ready = srv.wait_ready(deadline_s=600)
            results["local"] = {"mode": watch_mode(srv.port), "ready_s": local_ready}
            results["local"]["rename"] = freshness(srv.base_url, local, live, changes // 2, gap_s, False)
            results["local"]["announced"] = announced_freshness(srv.base_url, local_writer, live, changes // 2, gap_s)
            print(f"local: {results['local']}", file=sys.stderr)

        writer = SessionWriter(volume.server_path)  # its journal exists before the service starts
        with server.service(volume.mount_path, logs, name="network") as srv:
            ready = srv.wait_ready(deadline_s=900, interval_s=0.05)
            network: dict[str, Any] = {"mode": watch_mode(srv.port), "ready_s": ready}
            network["ready_vs_local"] = ready / local_ready
            results["network"] = network
            time.sleep(5)  # the first periods after the warm-up; the journal found
            network["journals_followed"] = probe.metric(srv.port, "sessions_announcement_journals")
            pids = [srv.pid, *volume_pids(volume)]
            before, started = cpu_seconds(pids), time.monotonic()
            time.sleep(idle_s)
            network["idle_cores"] = (cpu_seconds(pids) - before) / (time.monotonic() - started)
            network["rename"] = freshness(srv.base_url, volume.server_path, live, changes, max(gap_s, 0.25), False)
            network["announced"] = announced_freshness(srv.base_url, writer, live, changes, gap_s)
            network["announcements_read"] = probe.metric(srv.port, "sessions_announcements_read_total")
            print(f"network: {network}", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.netvolume", description=__doc__)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--unfinished", type=float, default=0.02)
    parser.add_argument(
        "--changes",
        type=int,
        default=200,
        help="changes per writer kind on the network volume (half that on the local disk)",
    )
    parser.add_argument("--gap-s", type=float, default=0.05, help="seconds between saves")
    parser.add_argument("--idle-s", type=float, default=20.0, help="idle CPU window, journal followed")
    options = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="netvolume-"))
    try:
        results = run(options.sessions, options.unfinished, options.changes, options.gap_s, options.idle_s, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def figures(results: dict[str, Any]) -> list[report.Figure]:
    network, local = results["network"], results["local"]
    details = {"mode": network["mode"], "settings": results["settings"]}

    def missed_or_nan(measured: dict[str, Any], key: str) -> float:
        value = measured.get(key)
        return math.nan if value is None or measured["missed"] else float(value)

    return [
        report.Figure("netfs: ready vs local disk", network["ready_vs_local"], "x", "<= 3", details),
        report.Figure("netfs: idle CPU (service + sshfs + sshd)", network["idle_cores"], "cores", "<= 0.1", details),
        report.Figure(
            "netfs: freshness p99, unaware writer",
            missed_or_nan(network["rename"], "p99_ms"),
            "ms",
            "<= 4000",
            network["rename"],
        ),  # fmt: skip
        report.Figure(
            "netfs: freshness p99, SessionWriter",
            missed_or_nan(network["announced"], "p99_ms"),
            "ms",
            "<= 500",
            network["announced"],
        ),  # fmt: skip
        report.Figure(
            "netfs: local disk freshness p99", missed_or_nan(local["rename"], "p99_ms"), "ms", "<= 250", local["rename"]
        ),  # fmt: skip
    ]
