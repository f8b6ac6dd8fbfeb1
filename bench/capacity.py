"""One replica at 10,000, 100,000 and 1,000,000 sessions, with the default cache bound
(100,000 documents; --quick: smaller folders and cache): time to ready, RSS, list page p99, GET
throughput (random ids over the whole folder, and over the newest 10,000, which the cache holds
at every size), one full rescan, and what listing the folder costs by itself. The figures the
10-million plan (README, "Capacity") is built on.

Folders are generated once into a cache folder that outlives the run (1,000,000 files take ~4 GB on disk
and minutes to write): BENCH_CACHE_DIR, default /tmp/sessions-bench-cache. The smaller sizes
are hard links to the first files of the biggest.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import probe, server, wrk
from bench.generate import generate, job_ids, link_subset
from bench.report import Figure, ratio
from bench.throughput import id_paths, list_paths

HOT = 10_000  # the newest sessions: cached at every size (at most half the cache)
SEED = 20240611


def cache_dir() -> Path:
    return Path(os.environ.get("BENCH_CACHE_DIR") or "/tmp/sessions-bench-cache")


def folders(sizes: list[int], log: Callable[[str], None]) -> dict[int, Path]:
    """A folder per size, generated (or linked) only if the cache does not hold it complete."""
    root = cache_dir()
    biggest = max(sizes)
    found: dict[int, Path] = {}
    for size in sorted(sizes, reverse=True):
        folder = root / (f"sessions-{size}" if size == biggest else f"sessions-{size}-of-{biggest}")
        stamp = folder / ".complete"  # hidden: the service ignores it
        if stamp.exists() and stamp.read_text() == f"{size} {SEED}\n":
            found[size] = folder
            continue
        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        if size == biggest:
            log(f"  generating {size:,} sessions in {folder} (kept for later runs)")
            generate(folder, size, SEED)
        else:
            link_subset(found[biggest], folder, job_ids(size, SEED))
        stamp.write_text(f"{size} {SEED}\n")
        log(f"    {time.perf_counter() - started:.1f} s")
        found[size] = folder
    return found


def listing_seconds(folder: Path) -> tuple[float, float]:
    """Listing the folder alone: names (what the watcher's rescans start from), then a stat of
    every file (what comparing signatures needs). Page cache warm."""
    started = time.perf_counter()
    names = sum(1 for _ in os.scandir(folder))
    listed = time.perf_counter() - started
    started = time.perf_counter()
    for entry in os.scandir(folder):
        entry.stat()
    assert names > 0
    return listed, time.perf_counter() - started


def read_once(folder: Path) -> None:
    """Read every file, so that the warm-up measured next finds them in the page cache (as the
    warm-up part does; a cold cache depends on the disk, and on a network volume on the server)."""
    for entry in os.scandir(folder):
        with open(entry.path, "rb") as stream:
            while stream.read(1 << 20):
                pass


def measure(
    folder: Path, size: int, work: Path, logs: Path, seconds: float, rescan_after_s: float, cache_entries: int
) -> dict[str, Any]:
    # The first rescan comes this long after ready: after the measurements, which it would disturb.
    settings = {"SESSIONS_RESCAN_INTERVAL_S": f"{rescan_after_s:g}", "SESSIONS_CACHE_MAX_ENTRIES": str(cache_entries)}
    srv = server.service(folder, logs, name=f"capacity-{size}", **settings)
    hot_count = min(HOT, cache_entries // 2)
    read_once(folder)
    figures: dict[str, Any] = {"sessions": size}
    with srv:
        figures["ready_s"] = srv.wait_ready(deadline_s=3600, interval_s=0.05)
        time.sleep(1.0)
        figures["rss_bytes"] = srv.rss_bytes()
        figures["rss_mib"] = figures["rss_bytes"] / 2**20
        listed: list[str] = []
        pages = wrk.write_paths(work / f"capacity-list-{size}.txt", list_paths(srv.port, listed=listed))
        if len(listed) != size:
            raise RuntimeError(f"listed {len(listed):,} sessions of {size:,}")
        every = wrk.write_paths(work / f"capacity-get-{size}.txt", id_paths(listed))
        hot = wrk.write_paths(work / f"capacity-hot-{size}.txt", id_paths(listed[:hot_count]))
        figures["hot_sessions"] = hot_count
        rescans_before = probe.metric(srv.port, "sessions_rescans_total") or 0.0
        for name, paths in (("list", pages), ("get", every), ("hot", hot)):
            wrk.run(srv.base_url, paths, 1)
            result = wrk.run(srv.base_url, paths, seconds, server_pid=srv.pid)
            figures[name] = {"rps": result.rps, "p99_ms": result.p99_ms, "p50_ms": result.p50_ms,
                             "errors": result.errors, "others_core": result.core_other}  # fmt: skip
        rescans_after = probe.metric(srv.port, "sessions_rescans_total") or 0.0
        figures["rescan_during_measurement"] = rescans_after > rescans_before
        deadline = time.monotonic() + rescan_after_s + 1800
        while (probe.metric(srv.port, "sessions_rescans_total") or 0.0) < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        rescans = probe.metric(srv.port, "sessions_rescans_total") or 0.0
        spent = probe.metric(srv.port, "sessions_rescan_duration_seconds_total") or 0.0
        figures["rescan_s"] = spent / rescans if rescans else float("nan")
        figures["cache_entries"] = probe.metric(srv.port, "sessions_cache_entries")
    figures["listdir_s"], figures["stat_all_s"] = listing_seconds(folder)
    return figures


def run(
    sizes: list[int],
    cache_entries: int,
    work: Path,
    logs: Path,
    seconds: float,
    rescan_after_s: float,
    log: Callable[[str], None],
) -> tuple[list[Figure], dict[str, Any]]:
    found = folders(sizes, log)
    results: dict[int, dict[str, Any]] = {}
    for size in sorted(sizes):
        log(f"  {size:,} sessions")
        r = results[size] = measure(found[size], size, work, logs, seconds, rescan_after_s, cache_entries)
        log(f"    ready {r['ready_s']:.1f} s, RSS {r['rss_bytes'] / 2**20:,.0f} MiB, "
            f"list p99 {r['list']['p99_ms']:.2f} ms ({r['list']['rps']:,.0f} req/s), "
            f"GET all {r['get']['rps']:,.0f} req/s (p99 {r['get']['p99_ms']:.2f} ms), "
            f"GET newest {r['hot_sessions']:,} {r['hot']['rps']:,.0f} req/s, rescan {r['rescan_s']:.2f} s, "
            f"listdir {r['listdir_s']:.2f} s, stat all {r['stat_all_s']:.2f} s, "
            f"others on the server core up to {max(r[k]['others_core'] for k in ('list', 'get', 'hot')):.0%}"
            + (" (a rescan ran during the measurements)" if r["rescan_during_measurement"] else ""))  # fmt: skip
    small, middle, big = sorted(sizes)[0], sorted(sizes)[len(sizes) // 2], sorted(sizes)[-1]
    s, m, b = results[small], results[middle], results[big]
    errors = sum(r[k]["errors"] for r in results.values() for k in ("list", "get", "hot"))
    per_indexed = (b["rss_bytes"] - m["rss_bytes"]) / (big - middle) if big > middle else float("nan")

    def each(path: tuple[str, ...], form: str) -> str:
        """One figure at every size, e.g. each(("list", "p99_ms"), "{:.2f} ms")."""
        shown = []
        for n in sorted(results):
            value: Any = results[n]
            for key in path:
                value = value[key]
            shown.append(form.format(value))
        return ", ".join(shown)

    figures = [
        Figure(f"capacity: time to ready per session, {big:,} vs {middle:,} sessions",
               ratio(b["ready_s"] / big, m["ready_s"] / middle), "x", "<= 1.3", {},
               f"ready in {each(('ready_s',), '{:.1f} s')} at {each(('sessions',), '{:,}')} sessions "
               "(page cache warm)"),
        Figure(f"capacity: RSS per session indexed beyond the cache ({middle:,} to {big:,})", per_indexed, "B",
               "<= 800", {}, f"RSS {each(('rss_mib',), '{:,.0f} MiB')}"),
        Figure(f"capacity: list page p99, {big:,} vs {small:,} sessions",
               ratio(b["list"]["p99_ms"], s["list"]["p99_ms"]), "x", "<= 1.5", {"errors": errors},
               f"p99 {each(('list', 'p99_ms'), '{:.2f} ms')}"),
        Figure(f"capacity: GET of the newest {b['hot_sessions']:,}, {big:,} vs {small:,} sessions",
               ratio(b["hot"]["rps"], s["hot"]["rps"]), "x", ">= 0.8", {"errors": errors},
               f"req/s {each(('hot', 'rps'), '{:,.0f}')}; over every id (the cache holds "
               f"{b['cache_entries']:,.0f} of {big:,} at the top): {each(('get', 'rps'), '{:,.0f}')}"),
    ]  # fmt: skip
    return figures, {str(size): result for size, result in results.items()}
