"""Files changing under a running service: /livez while 1,000 files churn, and freshness (file
written -> new version served) with native events."""

from __future__ import annotations

import http.client
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import probe, server
from bench.report import Figure, median, percentile
from bench.writer import rewrite

FRESH_DEADLINE_S = 3.0


def livez_during_churn(srv: server.Server, folder: Path, seconds: float, rate: float, hz: float) -> dict[str, Any]:
    poller = probe.LivezPoller(srv.port, hz)
    poller.start()
    argv = ["taskset", "-c", str(server.CLIENT_CORE), sys.executable, "-m", "bench.writer", str(folder),
            "--seconds", str(seconds), "--rate", str(rate)]  # fmt: skip
    try:
        done = subprocess.run(argv, cwd=server.ROOT, capture_output=True, text=True, timeout=seconds + 60, check=True)
    finally:
        latencies = poller.finish()
    return {"livez_ms": latencies, "failures": poller.failures, "writes": int(done.stdout.strip() or 0)}


def freshness(srv: server.Server, folder: Path, samples: int, seed: int = 11) -> dict[str, Any]:
    """Rewrite a random file with a new marker (rename and in place, alternately), then poll GET
    until the marker shows, at most FRESH_DEADLINE_S; a miss counts as the deadline."""
    rng = random.Random(seed)
    ids = sorted(path.stem for path in folder.glob("*.json"))
    conn = http.client.HTTPConnection(server.HOST, srv.port, timeout=5)
    lags: list[float] = []
    misses = 0
    for i in range(samples):
        job_id = rng.choice(ids)
        marker = f"fresh-{i}-{rng.getrandbits(32):08x}".encode()
        rewrite(folder / f"{job_id}.json", marker.decode(), in_place=i % 2 == 1)
        written = time.perf_counter()
        seen = False
        while time.perf_counter() - written < FRESH_DEADLINE_S:
            conn.request("GET", f"/api/v2/jobs/{job_id}")
            response = conn.getresponse()
            if marker in response.read():
                seen = True
                break
            time.sleep(0.001)
        lags.append((time.perf_counter() - written) * 1000)
        misses += not seen
        time.sleep(rng.uniform(0.02, 0.05))  # let each change stand alone
    conn.close()
    return {"lags_ms": lags, "misses": misses}


def run(
    folder: Path, logs: Path, seconds: float, rate: float, hz: float, samples: int, log: Callable[[str], None]
) -> tuple[list[Figure], dict[str, Any]]:
    files = len(list(folder.glob("*.json")))
    with server.service(folder, logs, name="service-churn") as srv:
        srv.wait_ready(deadline_s=120)
        churn = livez_during_churn(srv, folder, seconds, rate, hz)
        log(f"  churn: {churn['writes']} writes over {seconds:g} s, {len(churn['livez_ms'])} /livez samples")
        time.sleep(1.0)
        fresh = freshness(srv, folder, samples)
        log(f"  freshness: {samples} samples, {fresh['misses']} misses")
    livez, lags = churn["livez_ms"], fresh["lags_ms"]
    figures = [
        Figure(f"/livez p99 while {files:,} files churn", percentile(livez, 99), "ms", "<= 50",
               {"errors": churn["failures"]},
               f"{churn['writes']} writes at {rate:g}/s (rename and in place), {len(livez)} samples, "
               f"max {max(livez, default=float('nan')):.1f} ms"),
        Figure("freshness p99 (native events)", percentile(lags, 99), "ms", "<= 250",
               {"errors": fresh["misses"], "p50_ms": median(lags)},
               f"p50 {median(lags):.1f} ms, max {max(lags, default=float('nan')):.1f} ms, "
               f"{len(lags)} samples, {fresh['misses']} not seen within {FRESH_DEADLINE_S:g} s"),
    ]  # fmt: skip
    raw = {"churn_writes": churn["writes"], "livez_samples": len(livez), "fresh_lags_ms": lags}
    return figures, raw
