"""`python -m bench [--quick] [--only get,list,warmup,livez,fresh,memory,hashing,failover,capacity,watch,netfs]`:
see bench/README.md."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench import capacity, churn, failover, hashing, netvolume, report, server, throughput, warmup, watch, wrk
from bench.generate import generate, link_subset
from cluster import haproxy
from tests.support import netfs

PARTS = ("get", "list", "warmup", "livez", "fresh", "memory", "hashing", "failover", "capacity", "watch", "netfs")


@dataclass(frozen=True)
class Config:
    rounds: int = 5
    seconds: float = 10.0
    get_sessions: int = 20_000
    list_sessions: int = 100_000
    list_small_sessions: int = 1_000
    warm_sessions: int = 100_000
    churn_files: int = 1_000
    churn_seconds: float = 20.0
    churn_rate: float = 1000.0
    fresh_samples: int = 200
    livez_hz: float = 200.0
    hashing_sessions: int = 30_000  # three replicas, each caching a third
    failover_sessions: int = 1_000
    failover_kills: int = 10
    failover_mirrors: int = 10  # pairs: the whole collection and status=running, one client each
    capacity_sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    capacity_cache: int = 100_000  # the default SESSIONS_CACHE_MAX_ENTRIES
    capacity_rescan_after_s: float = 120.0
    netfs: netvolume.NetConfig = netvolume.NetConfig()  # the network-volume part: sshfs stand-in vs local disk
    seed: int = 20240601
    watch: watch.WatchConfig = watch.WatchConfig()


QUICK = Config(rounds=1, seconds=3, get_sessions=5_000, list_sessions=20_000, warm_sessions=20_000,
               churn_seconds=5, fresh_samples=40, hashing_sessions=6_000, capacity_sizes=(5_000, 20_000, 50_000),
               failover_kills=3, failover_mirrors=2, capacity_cache=10_000, capacity_rescan_after_s=30,
               netfs=netvolume.NetConfig(sessions=10_000, changes=40, idle_s=5),
               watch=watch.QUICK_WATCH)  # fmt: skip


def log(message: str) -> None:
    print(message, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Benchmark the job-session service.")
    parser.add_argument("--quick", action="store_true", help="a ~2 minute smoke run (smaller folders, one round)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of: {','.join(PARTS)}")
    parser.add_argument("--rounds", type=int, help="alternating rounds (default 5, --quick 1)")
    parser.add_argument("--seconds", type=float, help="seconds per wrk run (default 10, --quick 3)")
    parser.add_argument("--keep", action="store_true", help="keep the generated folder and server logs")
    parser.add_argument(
        "--netfs-sessions", type=int, help="sessions of the netfs part (default 100,000, --quick 10,000)"
    )
    parser.add_argument("--netfs-changes", type=int, help="changes per writer kind of the netfs part (default 100)")
    options = parser.parse_args(argv)
    parts = {part.strip() for part in options.only.split(",") if part.strip()}
    if unknown := parts - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if not wrk.available():
        print(wrk.INSTALL_HINT, file=sys.stderr)
        return 1
    if parts & {"hashing", "failover"} and haproxy.binary() is None:
        print(haproxy.INSTALL_HINT, file=sys.stderr)
        return 1
    if "netfs" in parts and (reason := netfs.unavailable()) is not None:
        print(f"the netfs part mounts sshfs: {reason}", file=sys.stderr)
        return 1
    if len(os.sched_getaffinity(0) | {0, 1}) < 2 or not {0, 1} <= os.sched_getaffinity(0):
        print("needs cores 0 and 1 (server and load generator each pinned to one)", file=sys.stderr)
        return 1
    config = QUICK if options.quick else Config()
    config = replace(config, rounds=options.rounds or config.rounds, seconds=options.seconds or config.seconds)
    network = replace(config.netfs, sessions=options.netfs_sessions or config.netfs.sessions,
                    changes=options.netfs_changes or config.netfs.changes)  # fmt: skip
    config = replace(config, netfs=network)
    server.pin_client()
    work = Path(tempfile.mkdtemp(prefix="sessions-bench-"))
    try:
        figures, raw = run(config, parts, work)
    finally:
        if options.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    path = report.write(figures, asdict(config) | {"parts": sorted(parts)}, raw)
    print()
    print(report.table(figures))
    print()
    print("Server: python -m app, one worker, uvloop + httptools, default settings (JSON access log to a file), "
          "and the same with SESSIONS_LOG_LEVEL=warning (no access lines) where named; references under the same "
          "uvicorn settings; load: wrk -t1 -c32 pinned to core 1, servers to core 0.")  # fmt: skip
    print(f"results: {path}")
    return 0 if all(figure.passed for figure in figures) else 3


def run(config: Config, parts: set[str], work: Path) -> tuple[list[report.Figure], dict[str, Any]]:
    logs = work / "logs"
    logs.mkdir()
    figures: list[report.Figure] = []
    raw: dict[str, Any] = {}
    biggest = max(config.get_sessions, config.list_sessions, config.warm_sessions, config.list_small_sessions,
                  config.hashing_sessions)  # fmt: skip
    started = time.perf_counter()
    everything = work / "all"
    ids: list[str] = []
    if parts & {"get", "list", "warmup", "livez", "memory", "hashing"}:  # the parts that read the big folder
        log(f"generating {biggest:,} sessions in {work}")
        ids = generate(everything, biggest, config.seed)
        log(f"  {time.perf_counter() - started:.1f} s")

    def subset(name: str, count: int) -> tuple[Path, list[str]]:
        if count == biggest:
            return everything, ids
        folder = work / name
        if not folder.exists():
            link_subset(everything, folder, ids[:count])
        return folder, ids[:count]

    if "get" in parts:
        log(f"GET by id: service (defaults, and access log off) vs limit vs lazy, {config.get_sessions:,} sessions")
        folder, subset_ids = subset("get", config.get_sessions)
        paths = wrk.write_paths(work / "get-paths.txt", throughput.id_paths(subset_ids))
        targets = [server.service(folder, logs),
                   server.service(folder, logs, name="service-no-access-log", **server.ACCESS_LOG_OFF),
                   server.reference("limit", folder, logs), server.reference("lazy", folder, logs)]  # fmt: skip
        stats = _with_servers(targets, lambda: throughput.alternate(
            [(s.name, s, paths) for s in targets], config.rounds, config.seconds, log))  # fmt: skip
        figures += throughput.get_by_id_figures(stats, config.get_sessions)
        raw["get"] = stats

    if "list" in parts:
        log(f"list pages: {config.list_sessions:,} vs {config.list_small_sessions:,} sessions")
        big_folder, big_ids = subset("list-big", config.list_sessions)
        small_folder, _ = subset("list-small", config.list_small_sessions)
        big = server.service(big_folder, logs, name="service-list-big")
        small = server.service(small_folder, logs, name="service-list-small")

        def measure() -> dict[str, Any]:
            big_paths, small_paths = throughput.list_paths(big.port), throughput.list_paths(small.port)
            big_list = wrk.write_paths(work / "list-big.txt", big_paths)
            small_list = wrk.write_paths(work / "list-small.txt", small_paths)
            big_render = wrk.write_paths(work / "list-render-big.txt", throughput.distinct_paths(big_paths))
            small_render = wrk.write_paths(work / "list-render-small.txt", throughput.distinct_paths(small_paths))
            big_get = wrk.write_paths(work / "get-big.txt", throughput.id_paths(big_ids))
            targets = [
                ("list-big", big, big_list),
                ("get-big", big, big_get),
                ("list-small", small, small_list),
                ("list-render-big", big, big_render),
                ("list-render-small", small, small_render),
            ]
            return throughput.alternate(targets, config.rounds, config.seconds, log)

        stats = _with_servers([big, small], measure)
        figures += throughput.list_figures(stats, config.list_sessions, config.list_small_sessions)
        raw["list"] = stats

    if parts & {"warmup", "memory"} or "livez" in parts:
        log(f"warm-up and memory: {config.warm_sessions:,} sessions")
        folder, _ = subset("warm", config.warm_sessions)
        empty = work / "empty"
        empty.mkdir(exist_ok=True)
        warm_figures, raw["warmup"] = warmup.run(
            folder, empty, logs, config.rounds, config.livez_hz, config.warm_sessions, log
        )
        wanted = {"warm-up": "warmup", "/livez": "livez", "memory": "memory"}
        figures += [f for f in warm_figures if any(f.name.startswith(k) and v in parts for k, v in wanted.items())]

    if parts & {"livez", "fresh"}:
        log(f"churn and freshness: {config.churn_files:,} files")
        folder = work / "churn"
        generate(folder, config.churn_files, config.seed + 1)
        churn_figures, raw["churn"] = churn.run(
            folder, logs, config.churn_seconds, config.churn_rate, config.livez_hz, config.fresh_samples, log
        )
        figures += [f for f in churn_figures if ("fresh" in parts if "freshness" in f.name else "livez" in parts)]
    if "hashing" in parts:
        log(f"hashing: 3 replicas behind HAProxy, {config.hashing_sessions:,} sessions, each caching a third")
        folder, subset_ids = subset("hashing", config.hashing_sessions)
        hashing_figures, raw["hashing"] = hashing.run(folder, subset_ids, work, config.rounds, config.seconds, log)
        figures += hashing_figures

    if "failover" in parts:
        log(f"failover: 3 replicas behind HAProxy, {config.failover_kills} SIGKILLs, callers through the library")
        failover_figures, raw["failover"] = failover.run(
            work, config.failover_sessions, config.failover_kills, config.failover_mirrors, config.seed + 2, log
        )
        figures += failover_figures

    if "capacity" in parts:
        log(f"capacity: one replica at {', '.join(f'{n:,}' for n in config.capacity_sizes)} sessions "
            f"(folders kept in {capacity.cache_dir()})")  # fmt: skip
        capacity_figures, raw["capacity"] = capacity.run(
            list(config.capacity_sizes), config.capacity_cache, work, logs, config.seconds,
            config.capacity_rescan_after_s, log,
        )  # fmt: skip
        figures += capacity_figures

    if "watch" in parts:
        log("change stream: event lag, idle streams, watching vs polling")
        watch_figures, raw["watch"] = watch.run(work, logs, config.watch, log)
        figures += watch_figures
    if "netfs" in parts:
        log(f"network volume: {config.netfs.sessions:,} sessions over sshfs (tests/support/netfs.py) vs the local disk")
        raw["netfs"] = netvolume.run(config.netfs, work / "netfs", log)
        figures += netvolume.figures(raw["netfs"])
    log(f"done in {time.perf_counter() - started:.0f} s")
    random.seed()
    return figures, raw


def _with_servers(servers: list[server.Server], body: Any) -> Any:
    try:
        for srv in servers:
            srv.start()
        for srv in servers:
            srv.wait_ready(deadline_s=600)
        return body()
    except server.ServerError:
        raise
    except Exception as exc:
        tails = "\n".join(f"--- {srv.name} log:\n{srv.log_tail()}" for srv in servers)
        raise RuntimeError(f"{exc}\n{tails}") from exc
    finally:
        for srv in servers:
            code = srv.stop()
            if code not in (0, None, -15):
                log(f"  {srv.name} exited with status {code}")


if __name__ == "__main__":
    sys.exit(main())
