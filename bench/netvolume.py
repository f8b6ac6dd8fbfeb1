"""The network-volume part (`python -m bench --only netfs`, or alone): the service on a network
volume with no setting but SESSIONS_DIR, against the same folder on the local disk in the same
run (docs/network-volumes.md).

On the local disk: time to ready (the reference), `/livez` p99 during that warm-up, freshness of
each writer kind. On the network volume: the mode `auto` chose, time to ready and its ratio to
the local disk's, `/livez` p99 during the warm-up, idle CPU of the service, the FUSE client and
the file server together while a writer's journal is followed, and freshness of each writer kind
on unfinished sessions, the changes made on the file server's side: `rename` and `in_place`
(writers that know nothing of the service, bench/netpoll.py) and `announced` (`SessionWriter`,
which announces what it wrote).

The network volume is tests/support/netfs.py's stand-in (a loopback sshd, sshfs with a 3 s attribute
cache). The measuring code is bench/netpoll.py's; this module runs it.

    python -m bench.netvolume [--sessions 100000] [--unfinished 0.02] [--changes 100]
        [--gap-s 0.25] [--announce-gap-s 0.05] [--idle-s 62] [--writers rename,in_place,announced]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sessions_client import SessionWriter

from bench import probe, report, server
from bench.netpoll import SETTLE_S, Write, cpu_seconds, freshness, generate, in_place, renaming, volume_pids
from bench.report import percentile
from tests.support import netfs

WRITERS = ("rename", "in_place", "announced")
# Every wait of the run is bounded: a warm-up that takes longer is a failure, not a figure.
READY_DEADLINE_S = 900.0


@dataclass(frozen=True)
class NetConfig:
    sessions: int = 100_000
    unfinished: float = 0.02
    changes: int = 100  # per writer kind on the network volume; half that on the local disk
    gap_s: float = 0.25  # between changes of the writers that know nothing of the service
    announce_gap_s: float = 0.05  # between saves of SessionWriter
    idle_s: float = 62.0  # the idle CPU window: one full rescan (60 s) falls in it
    writers: tuple[str, ...] = WRITERS


def announcing(writer: SessionWriter) -> Write:
    """The writer that cooperates: `SessionWriter.save` (temp file, fsync, rename, announce)."""

    def write(job_id: str, data: bytes) -> None:
        writer.save(job_id, data)

    return write


def wait_warm_start_written(port: int) -> float:
    """Seconds until the service reports the warm-start file written; an error if it reports
    that it failed or skipped it (the restart's figure would then be a cold start's)."""
    started = time.monotonic()
    while time.monotonic() - started < READY_DEADLINE_S:
        _, _, body = probe.get(port, "/metrics")
        for line in body.decode().splitlines():
            if line.startswith("sessions_warm_start_writes_total{") and not line.endswith(" 0.0"):
                if 'outcome="written"' not in line:
                    raise RuntimeError(f"the warm-start file was not written: {line}")
                return time.monotonic() - started
        time.sleep(0.2)
    raise TimeoutError("the warm-start file was not written")


def watch_mode(port: int) -> str:
    """`sessions_watch_mode`'s labels: the mode chosen, the setting, the filesystem and why."""
    _, _, body = probe.get(port, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith("sessions_watch_mode{"):
            return line.rsplit(" ", 1)[0].removeprefix("sessions_watch_mode")
    return "unknown"


def warm_up(srv: server.Server, livez_hz: float) -> dict[str, Any]:
    """Start `srv` and time it to ready, probing /livez meanwhile."""
    poller = probe.LivezPoller(srv.port, livez_hz, max_seconds=READY_DEADLINE_S)
    poller.start()
    try:
        ready = srv.wait_ready(deadline_s=READY_DEADLINE_S, interval_s=0.02)
    finally:
        livez = poller.finish()
    return {
        "mode": watch_mode(srv.port),
        "ready_s": ready,
        "livez_p99_ms": percentile(livez, 99),
        "livez_samples": len(livez),
        "livez_failures": poller.failures,
    }


# A rewrite in place does not change the folder: on a network mount the full rescan (every
# 60 s by default) finds it (docs/network-volumes.md), so its changes are waited for that long.
IN_PLACE_SETTLE_S = 75.0


def all_freshness(
    srv: server.Server, folder: Path, writers: dict[str, tuple[Write, float]], live: list[str], changes: int
) -> dict[str, Any]:
    return {
        kind: freshness(
            srv.base_url, folder, live, changes, gap, write, IN_PLACE_SETTLE_S if kind == "in_place" else SETTLE_S
        )
        for kind, (write, gap) in writers.items()
    }


def run(config: NetConfig, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    logs = work / "logs"
    logs.mkdir(parents=True)
    results: dict[str, Any] = {"settings": asdict(config)}
    with netfs.mounted(work / "volume") as volume:
        log(f"  generating {config.sessions:,} sessions on the file server's side")
        live = generate(volume.server_path, config.sessions, config.unfinished)
        local = work / "local"
        local.mkdir()
        for name in os.listdir(volume.server_path):
            os.link(volume.server_path / name, local / name)

        def writers(folder: Path) -> dict[str, tuple[Write, float]]:
            # SessionWriter's journal exists before the service starts, as a writer running
            # beside the service would have it.
            every = {
                "rename": (renaming(folder), config.gap_s),
                "in_place": (in_place(folder), config.gap_s),
                "announced": (announcing(SessionWriter(folder)), config.announce_gap_s),
            }
            return {kind: every[kind] for kind in config.writers}

        local_writers = writers(local)
        with server.service(local, logs, name="local") as srv:
            results["local"] = warm_up(srv, 200)
            log(f"  local disk: ready {results['local']['ready_s']:.1f} s")
            results["local"] |= all_freshness(srv, local, local_writers, live, max(1, config.changes // 2))
            log(f"  local disk: {results['local']}")

        network_writers = writers(volume.server_path)
        with server.service(volume.mount_path, logs, name="network") as srv:
            network = results["network"] = warm_up(srv, 50)
            network["first_start_vs_local"] = network["ready_s"] / results["local"]["ready_s"]
            log(f"  network volume, first start: {network['mode']}, ready {network['ready_s']:.1f} s")
            # The first replica leaves the warm-start file once warm: start-up work, waited for
            # before the idle window.
            network["warm_start_write_s"] = wait_warm_start_written(srv.port)
            time.sleep(5)  # the first periods after the warm-up; the journal found
            network["journals_followed"] = probe.metric(srv.port, "sessions_announcement_journals")
            network["hot_files"] = probe.metric(srv.port, "sessions_poll_hot_files")
            service, mount = [srv.pid], volume_pids(volume)
            before, started = (cpu_seconds(service), cpu_seconds(mount)), time.monotonic()
            time.sleep(config.idle_s)
            took = time.monotonic() - started
            network["idle_cores_service"] = (cpu_seconds(service) - before[0]) / took
            network["idle_cores_volume"] = (cpu_seconds(mount) - before[1]) / took
            network["idle_cores"] = network["idle_cores_service"] + network["idle_cores_volume"]
            network |= all_freshness(srv, volume.server_path, network_writers, live, config.changes)
            network["announcements_read"] = probe.metric(srv.port, "sessions_announcements_read_total")
            log(f"  network volume: {network}")
        # A restart (a deploy, a rescheduled pod) after those changes: the warm-up starts from
        # the warm-start file the first start left, and reads what changed since.
        with server.service(volume.mount_path, logs, name="network-restart") as srv:
            restart = network["restart"] = warm_up(srv, 50)
            restart["warm_start_sessions"] = probe.metric(srv.port, "sessions_warm_start_sessions")
            network["ready_vs_local"] = restart["ready_s"] / results["local"]["ready_s"]
            log(f"  network volume, restart: ready {restart['ready_s']:.1f} s, {restart}")
    return results


def figures(results: dict[str, Any]) -> list[report.Figure]:
    network, local = results["network"], results["local"]
    details = {"mode": network["mode"], "settings": results["settings"]}

    def p99(measured: dict[str, Any] | None) -> float:
        if measured is None or measured["missed"] or measured["p99_ms"] is None:
            return math.nan
        return float(measured["p99_ms"])

    made = [
        report.Figure("netfs: ready vs local disk (restart)", network["ready_vs_local"], "x", "<= 3", details,
                      note=f"first start, no warm-start file: {network['first_start_vs_local']:.1f}x"),
        report.Figure("netfs: idle CPU (service + sshfs + ssh + sshd)", network["idle_cores"], "cores", "<= 0.1",
                      details),
        report.Figure("netfs: /livez p99 during the warm-up", network["livez_p99_ms"], "ms", "<= 50", details),
        report.Figure("netfs: /livez p99 during the restart's warm-up", network["restart"]["livez_p99_ms"], "ms",
                      "<= 50", details),
        report.Figure("netfs: local disk /livez p99 during the warm-up", local["livez_p99_ms"], "ms", "<= 50"),
    ]  # fmt: skip
    if "rename" in network:
        rename = report.Figure("netfs: freshness p99, unaware writer", p99(network["rename"]), "ms", "<= 4000",
                               network["rename"])  # fmt: skip
        if "in_place" in network:  # no goal of its own: reported beside the one that has one
            rename.note = f"rewritten in place: p99 {p99(network['in_place']):.0f} ms"
        made.append(rename)
    if "announced" in network:
        announced = network["announced"]
        made.append(report.Figure("netfs: freshness p99, SessionWriter", p99(announced), "ms", "<= 500", announced))
    if "rename" in local:
        made.append(
            report.Figure("netfs: local disk freshness p99", p99(local["rename"]), "ms", "<= 250", local["rename"])
        )
    return made


def main(argv: list[str] | None = None) -> int:
    defaults = NetConfig()
    parser = argparse.ArgumentParser(prog="python -m bench.netvolume", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--sessions", type=int, default=defaults.sessions)
    parser.add_argument("--unfinished", type=float, default=defaults.unfinished, help="share of running sessions")
    parser.add_argument("--changes", type=int, default=defaults.changes,
                        help="changes per writer kind on the network volume (half that on the local disk)")  # fmt: skip
    parser.add_argument("--gap-s", type=float, default=defaults.gap_s, help="seconds between unaware writes")
    parser.add_argument("--announce-gap-s", type=float, default=defaults.announce_gap_s,
                        help="seconds between SessionWriter saves")  # fmt: skip
    parser.add_argument("--idle-s", type=float, default=defaults.idle_s, help="idle CPU window")
    parser.add_argument("--writers", default=",".join(WRITERS), help=f"comma-separated of: {','.join(WRITERS)}")
    options = parser.parse_args(argv)
    chosen = tuple(kind.strip() for kind in options.writers.split(",") if kind.strip())
    if unknown := set(chosen) - set(WRITERS):
        parser.error(f"unknown writers: {', '.join(sorted(unknown))}")
    config = NetConfig(options.sessions, options.unfinished, options.changes, options.gap_s,
                       options.announce_gap_s, options.idle_s, chosen)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="netvolume-"))
    try:
        results = run(config, work, lambda message: print(message, file=sys.stderr, flush=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    print(report.table(figures(results)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
