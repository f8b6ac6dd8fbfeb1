"""Warm-up: time to ready against a bare read-and-parse loop, /livez meanwhile, and memory
(RSS after readiness with the cache on, with it off, and with an empty folder)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import probe, server
from bench.generate import mean_file_bytes
from bench.report import Figure, median, percentile, ratio

SETTLE_S = 1.0


def bare_loop_seconds(folder: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["taskset", "-c", str(server.SERVER_CORE), sys.executable, "-m", "bench.bare_warm", str(folder)],
        cwd=server.ROOT, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return time.perf_counter() - started


def warm_service(folder: Path, logs: Path, hz: float, **settings: str) -> dict[str, Any]:
    """Start the service, poll /livez until ready; RSS once settled."""
    with server.service(folder, logs, **settings) as srv:
        poller = probe.LivezPoller(srv.port, hz)
        poller.start()
        try:
            ready_s = srv.wait_ready(deadline_s=600, interval_s=0.01)
        finally:
            latencies = poller.finish()
        time.sleep(SETTLE_S)
        cached = probe.metric(srv.port, "sessions_cache_entries")
        return {"ready_s": ready_s, "rss": srv.rss_bytes(), "livez_ms": latencies,
                "livez_failures": poller.failures, "cache_entries": cached}  # fmt: skip


def run(
    folder: Path, empty: Path, logs: Path, rounds: int, hz: float, sessions: int, log: Callable[[str], None]
) -> tuple[list[Figure], dict[str, Any]]:
    bare: list[float] = []
    full: list[dict[str, Any]] = []
    index_only: list[dict[str, Any]] = []
    baseline: list[dict[str, Any]] = []
    for r in range(rounds):
        bare.append(bare_loop_seconds(folder))
        full.append(warm_service(folder, logs, hz))
        index_only.append(warm_service(folder, logs, hz, SESSIONS_CACHE_MAX_ENTRIES="0"))
        baseline.append(warm_service(empty, logs, hz))
        log(f"  round {r + 1}/{rounds}: bare loop {bare[-1]:.2f} s, service ready {full[-1]['ready_s']:.2f} s, "
            f"RSS full {full[-1]['rss'] / 2**20:.0f} MiB, index-only {index_only[-1]['rss'] / 2**20:.0f} MiB, "
            f"empty {baseline[-1]['rss'] / 2**20:.0f} MiB, cached {full[-1]['cache_entries']}")  # fmt: skip
    ready = median([x["ready_s"] for x in full])
    livez = [ms for x in full for ms in x["livez_ms"]]
    livez_failures = sum(x["livez_failures"] for x in full)
    rss_full = median([x["rss"] for x in full])
    rss_index = median([x["rss"] for x in index_only])
    rss_base = median([x["rss"] for x in baseline])
    doc_bytes = mean_file_bytes(folder)
    per_cached = (rss_full - rss_index) / sessions
    per_indexed = (rss_index - rss_base) / sessions
    figures = [
        Figure(f"warm-up {sessions:,} sessions: time to ready vs bare loop", ratio(ready, median(bare)), "x",
               "<= 1.5", {}, f"medians: ready {ready:.2f} s, bare loop {median(bare):.2f} s"),
        Figure("/livez p99 during warm-up", percentile(livez, 99), "ms", "<= 50",
               {"errors": livez_failures, "samples": len(livez)},
               f"{len(livez)} samples, max {max(livez, default=float('nan')):.1f} ms, failures {livez_failures}"),
        Figure("memory: RSS per cached session vs document bytes", ratio(per_cached, doc_bytes), "x", "<= 1.5",
               {}, f"{per_cached:,.0f} B per cached session, mean file {doc_bytes:,.0f} B"),
        Figure("memory: RSS per indexed, uncached session", per_indexed, "B", "<= 400", {},
               f"RSS medians: cache on {rss_full / 2**20:.1f} MiB, cache off {rss_index / 2**20:.1f} MiB, "
               f"empty {rss_base / 2**20:.1f} MiB"),
    ]  # fmt: skip
    raw = {
        "bare_loop_s": bare,
        "ready_s": [x["ready_s"] for x in full],
        "rss_cache_on": [x["rss"] for x in full],
        "rss_cache_off": [x["rss"] for x in index_only],
        "rss_empty": [x["rss"] for x in baseline],
        "cache_entries": [x["cache_entries"] for x in full],
        "cache_entries_off": [x["cache_entries"] for x in index_only],
        "mean_file_bytes": doc_bytes,
        "livez_samples": len(livez),
    }
    return figures, raw
