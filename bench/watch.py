"""The change stream: event lag with many streams, what idle streams cost, and watching against
polling. The service runs at its defaults (access log on) on core 0; the streaming clients
(`bench.streams`, one asyncio process) and the file writers on core 1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from bench import fanout_floor, probe, server
from bench.generate import generate
from bench.report import Figure, median, percentile

# As users run it: the defaults (the access log included), but a short graceful timeout.
WATCH_ENV = {"SESSIONS_LOG_LEVEL": "info", "SESSIONS_GRACEFUL_TIMEOUT_S": "5"}
TICKS = os.sysconf("SC_CLK_TCK")


# Seconds of the idle streams' own CPU rate, measured with nothing else going on.
IDLE_CPU_S = 5.0


@dataclass(frozen=True)
class WatchConfig:
    lag_streams: int = 1000
    lag_events: int = 200
    lag_interval_s: float = 0.05
    idle_streams: int = 10_000
    idle_events: int = 50
    idle_hold_s: float = 20.0
    callers: int = 1000
    change_rate: float = 5.0  # file changes per second while the callers poll or watch
    compare_seconds: float = 30.0
    compare_rounds: int = 2


QUICK_WATCH = WatchConfig(lag_events=40, idle_streams=2000, idle_events=10, idle_hold_s=5, compare_seconds=10,
                          compare_rounds=1)  # fmt: skip


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


class Clients:
    """A `bench.streams` process on the client core, driven by lines."""

    def __init__(self, *args: str) -> None:
        argv = ["taskset", "-c", str(server.CLIENT_CORE), sys.executable, "-m", "bench.streams", *args]
        self.process = subprocess.Popen(argv, cwd=server.ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def read(self, key: str, timeout_s: float = 300) -> Any:
        deadline = time.monotonic() + timeout_s
        stdout: IO[str] = self.process.stdout  # type: ignore[assignment]
        while time.monotonic() < deadline:
            line = stdout.readline()
            if not line:
                raise RuntimeError(f"bench.streams exited with {self.process.wait()} before {key!r}")
            message = orjson.loads(line)
            if key in message:
                return message[key]
        raise RuntimeError(f"no {key!r} from bench.streams within {timeout_s} s")

    def say(self, line: str) -> None:
        stdin: IO[str] = self.process.stdin  # type: ignore[assignment]
        stdin.write(line + "\n")
        stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def _revision(srv: server.Server) -> str:
    _, headers, _ = probe.get(srv.port, "/api/v2/jobs?limit=1")
    return headers["x-revision"]


def _lag(srv: server.Server, folder: Path, kind: str, config: WatchConfig, job: str) -> dict[str, Any]:
    clients = Clients("lag", "--port", str(srv.port), "--folder", str(folder), "--kind", kind,
                      "--count", str(config.lag_streams), "--events", str(config.lag_events),
                      "--interval", str(config.lag_interval_s), "--revision", _revision(srv), "--job", job)  # fmt: skip
    try:
        clients.read("ready")
        cpu_before = cpu_seconds(srv.pid)
        clients.say("go")
        result: dict[str, Any] = clients.read("done")
        result["server_cpu_s"] = cpu_seconds(srv.pid) - cpu_before
        return result
    finally:
        clients.close()


def _idle(srv: server.Server, folder: Path, config: WatchConfig, log: Callable[[str], None]) -> dict[str, Any]:
    time.sleep(1.0)
    rss_before = srv.rss_bytes()
    clients = Clients("idle", "--port", str(srv.port), "--folder", str(folder),
                      "--count", str(config.idle_streams), "--events", str(config.idle_events),
                      "--interval", "0.1", "--revision", _revision(srv))  # fmt: skip
    try:
        opened_at = time.monotonic()
        clients.read("ready", timeout_s=600)
        log(f"    {config.idle_streams:,} streams open in {time.monotonic() - opened_at:.1f} s")
        time.sleep(1.0)
        rss_open = srv.rss_bytes()
        poller = probe.LivezPoller(srv.port, 200.0)
        poller.start()
        time.sleep(config.idle_hold_s)  # idle streams; bookmarks fall due meanwhile
        livez = poller.finish()
        # What the idle streams cost by themselves (bookmarks, the sweeps), without the probe's
        # 200 requests a second, which are not there while the events are sent.
        idle_cpu = cpu_seconds(srv.pid)
        time.sleep(IDLE_CPU_S)
        idle_cpu = cpu_seconds(srv.pid) - idle_cpu
        cpu_before = cpu_seconds(srv.pid)
        events_started = time.monotonic()
        clients.say("go")
        delivered = clients.read("delivered", timeout_s=600)
        events_s = time.monotonic() - events_started
        cpu = cpu_seconds(srv.pid) - cpu_before
        clients.say("close")
        clients.read("done")
    finally:
        clients.close()
    return {
        "rss_before": rss_before,
        "rss_open": rss_open,
        "livez_ms": livez,
        "livez_failures": poller.failures,
        "idle_cpu_s": idle_cpu,
        "idle_s": IDLE_CPU_S,
        "events_cpu_s": cpu,
        "events_s": events_s,
        "delivered": delivered,
    }


def _compare(srv: server.Server, folder: Path, ids: list[str], config: WatchConfig, mode: str) -> float:
    """Server CPU seconds per minute while a writer changes sessions at `config.change_rate`
    per second and `config.callers` callers poll once a second (`poll`), watch (`watch`), or
    are not there (`none`: what the process costs whoever calls it)."""
    seconds = str(config.compare_seconds)
    clients = None
    if mode != "none":
        clients = Clients("poll" if mode == "poll" else "watch-jobs", "--port", str(srv.port),
                          "--jobs", ",".join(ids[: config.callers]), "--seconds", seconds)  # fmt: skip
    try:
        if clients is not None:
            clients.read("ready")
        writer = subprocess.Popen(
            ["taskset", "-c", str(server.CLIENT_CORE), sys.executable, "-m", "bench.writer", str(folder),
             "--seconds", seconds, "--rate", str(config.change_rate)],
            cwd=server.ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        before, started = cpu_seconds(srv.pid), time.monotonic()
        if clients is not None:
            clients.say("go")
            clients.read("done", timeout_s=config.compare_seconds + 120)
        else:
            time.sleep(config.compare_seconds)
        cpu, elapsed = cpu_seconds(srv.pid) - before, time.monotonic() - started
        writer.wait(60)
    finally:
        if clients is not None:
            clients.close()
    return cpu / elapsed * 60


def run(work: Path, logs: Path, config: WatchConfig, log: Callable[[str], None]) -> tuple[list[Figure], dict[str, Any]]:
    folder = work / "watch"
    ids = generate(folder, max(1000, config.callers), seed=20240602)
    raw: dict[str, Any] = {}
    figures: list[Figure] = []

    log(f"  event lag, {config.lag_streams:,} collection streams, then {config.lag_streams:,} streams on one job")
    with server.service(folder, logs, name="service-watch-lag", **WATCH_ENV) as srv:
        srv.wait_ready()
        raw["lag_collection"] = _lag(srv, folder, "collection", config, ids[0])
        raw["lag_job"] = _lag(srv, folder, "job", config, ids[0])
    for key, label in (("lag_collection", "collection streams"), ("lag_job", "job streams on one job")):
        lags = [seconds * 1000 for seconds in raw[key]["lags_s"]]
        p50, p99 = percentile(lags, 50), percentile(lags, 99)
        log(f"    {label}: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(lags):,} receipts, "
            f"{raw[key]['missing']} missing, server CPU {raw[key]['server_cpu_s']:.2f} s")  # fmt: skip
        figures.append(Figure(f"event lag p99, {config.lag_streams:,} {label}", p99, "ms", "<= 100",
                              {"p50_ms": p50, "receipts": len(lags), "missing": raw[key]["missing"]},
                              f"p50 {p50:.1f} ms; file renamed -> event read by the client"))  # fmt: skip

    log(f"  {config.idle_streams:,} idle streams on one process")
    with server.service(folder, logs, name="service-watch-idle", **WATCH_ENV) as srv:
        srv.wait_ready()
        idle = raw["idle"] = _idle(srv, folder, config, log)
    per_stream = (idle["rss_open"] - idle["rss_before"]) / config.idle_streams
    receipts = config.idle_events * config.idle_streams
    # Less what the same streams cost meanwhile when nothing happens (bookmarks, the sweeps).
    idle_rate = idle["idle_cpu_s"] / idle["idle_s"]
    per_event_us = max(0.0, idle["events_cpu_s"] - idle_rate * idle["events_s"]) / receipts * 1e6
    raw_per_event_us = idle["events_cpu_s"] / receipts * 1e6
    livez_p99 = percentile(idle["livez_ms"], 99)
    floor_us = idle["floor_us"] = fanout_floor.measure(config.idle_streams, config.idle_events)
    log(f"    RSS {per_stream / 1024:.1f} KiB per stream; /livez p99 {livez_p99:.2f} ms; "
        f"{per_event_us:.2f} us of server CPU per event per stream ({idle['delivered']:,} streams got the last); "
        f"idle CPU {idle['idle_cpu_s'] / idle['idle_s'] * 100:.1f} %")  # fmt: skip
    figures += [
        Figure(f"RSS per idle stream, {config.idle_streams:,} streams", per_stream / 1024, "KiB", "<= 20",
               {"rss_before": idle["rss_before"], "rss_open": idle["rss_open"]}),
        Figure(f"/livez p99 with {config.idle_streams:,} streams open", livez_p99, "ms", "<= 50",
               {"samples": len(idle["livez_ms"]), "errors": idle["livez_failures"]}),
        Figure("CPU per event per matching stream", per_event_us, "us", "<= 10",
               {"events": config.idle_events, "streams": config.idle_streams, "cpu_s": idle["events_cpu_s"],
                "delivered_last": idle["delivered"], "raw_us": raw_per_event_us, "floor_us": floor_us},
               f"server CPU during the writes, less the idle streams' own rate, / (events x streams); "
               f"{raw_per_event_us:.2f} us without subtracting; includes reading the files. Floor, the same "
               f"hour: {floor_us:.2f} us for a bare uvloop write of an event-sized chunk to each of as many "
               f"loopback sockets (bench/fanout_floor.py): {per_event_us / floor_us:.2f}x the floor"),
    ]  # fmt: skip

    log(f"  {config.callers:,} callers, {config.change_rate:g} changes/s: polling once a second vs watching")
    polling: list[float] = []
    watching: list[float] = []
    nobody: list[float] = []
    with server.service(folder, logs, name="service-watch-compare", **WATCH_ENV) as srv:
        srv.wait_ready()
        for round_ in range(config.compare_rounds):
            polling.append(_compare(srv, folder, ids, config, "poll"))
            watching.append(_compare(srv, folder, ids, config, "watch"))
            nobody.append(_compare(srv, folder, ids, config, "none"))
            log(f"    round {round_ + 1}: polling {polling[-1]:.3f}, watching {watching[-1]:.3f}, "
                f"no callers {nobody[-1]:.3f} CPU s/min")  # fmt: skip
    poll_s, watch_s, base_s = median(polling), median(watching), median(nobody)
    # What the callers cost: the same server with no callers, at the same rate of changes,
    # pays the rest (the watcher's ticks, reloading the files, the metrics) whoever calls it.
    callers_ratio = (poll_s - base_s) / max(watch_s - base_s, 1e-3)
    raw["compare"] = {"polling_cpu_s_per_min": polling, "watching_cpu_s_per_min": watching,
                      "no_callers_cpu_s_per_min": nobody}  # fmt: skip
    figures += [
        Figure(f"polling vs watching, CPU for {config.callers:,} callers", callers_ratio, "x", ">= 50",
               {"polling": poll_s, "watching": watch_s, "no_callers": base_s},
               f"CPU s/min less the no-caller server: polling {poll_s - base_s:.3f}, watching "
               f"{watch_s - base_s:.3f}; {config.change_rate:g} changes/s"),
        Figure(f"polling vs watching, whole server CPU, {config.callers:,} callers", poll_s / watch_s, "x", ">= 1",
               {"polling": poll_s, "watching": watch_s},
               f"{poll_s:.3f} vs {watch_s:.3f} CPU s/min, of which {base_s:.3f} with no callers at all"),
    ]  # fmt: skip
    return figures, raw
