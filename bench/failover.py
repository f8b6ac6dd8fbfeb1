"""Failover: three replicas behind HAProxy at their default settings, callers through the
callers' library (bench/callers.py: gets, list pages, long polls, mirrors of the collection and
job watches); one replica killed with SIGKILL per round, in turn.

Each round: every copy is equal to the folder; a replica is killed and, at the same instant, a
session is changed; the round's figure is the time from the kill until every mirror and job
watch holds the folder again (the copies that were on the dead replica must notice the broken
stream, resume elsewhere, get a 410 there, and list again). The replica is then started again
and the copies settle before the next round. Every request a caller made meanwhile is counted,
and every failure it saw."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sessions_client import Backoff

from bench import server
from bench.callers import Readers, Record, Truth, Watchers, agreed_truth, split_ids, write_session
from bench.generate import generate
from bench.report import Figure, median, percentile
from cluster import Cluster

REPLICAS = 3
HOT = 8


def _settle(
    cluster: Cluster,
    watchers: Watchers,
    folder: Path,
    hot: list[str],
    timeout: float,
    served: Callable[[Truth], bool] = lambda truth: True,
) -> Truth:
    """Wait until the live replicas agree with the folder, `served(truth)` holds (a change has
    reached them), and every copy equals them."""
    deadline = time.monotonic() + timeout
    while True:
        urls = [replica.url for replica in cluster.replicas if replica.running()]
        truth = agreed_truth(urls, hot, folder)
        if truth is not None and served(truth) and not watchers.differences(truth):
            return truth
        if time.monotonic() > deadline:
            raise RuntimeError(f"the copies did not settle in {timeout} s: {truth and watchers.differences(truth)}")
        time.sleep(0.01)


def run(
    work: Path, sessions: int, kills: int, mirrors: int, seed: int, log: Callable[[str], None]
) -> tuple[list[Figure], dict[str, Any]]:
    folder = work / "failover-sessions"
    ids = generate(folder, sessions, seed)
    hot, _, stable = split_ids(ids, HOT, 0)
    cluster = Cluster(folder, work / "failover", REPLICAS, server.SERVICE_ENV)
    record = Record()
    converged_s: list[float] = []
    relists: list[int] = []
    calls_during = 0
    readers = watchers = None
    try:
        cluster.start(timeout=300)
        # The library's default backoff, as callers run it.
        watchers = Watchers(cluster.url, hot, record, mirrors, Backoff()).start(synced_within=120)
        # The folder is quiet but for one change per round: long polls end by their timeout.
        kinds = ("get", "get", "list", "poll")
        readers = Readers(cluster.url, stable, hot, record, kinds, max_seconds=kills * 120 + 120, wait_timeout=5,
                          backoff=Backoff())  # fmt: skip
        readers.start()
        for round_ in range(kills):
            truth = _settle(cluster, watchers, folder, hot, 120)
            victim = cluster.replicas[round_ % REPLICAS]
            changed = hot[round_ % HOT]
            before_relists, before_calls = watchers.relists(), record.count()
            victim.kill()
            killed_at = time.monotonic()
            write_session(folder, changed, "completed", f"2026-12-02T13:00:{round_:02d}Z")
            old = truth.etags[changed]
            _settle(cluster, watchers, folder, hot, 120, lambda now, j=changed, old=old: now.etags[j] != old)
            converged_s.append(time.monotonic() - killed_at)
            relists.append(watchers.relists() - before_relists)
            calls_during += record.count() - before_calls
            log(f"  kill {round_ + 1}/{kills} ({victim.name}): every copy equal after {converged_s[-1] * 1000:.0f} ms, "
                f"{relists[-1]} relists, {len(record.failures())} failed calls so far")  # fmt: skip
            victim.start()
            victim.wait_ready(120)
            cluster.wait_routed([victim.name], timeout=60)
    finally:
        if readers is not None:
            readers.stop()
        if watchers is not None:
            watchers.stop()
        cluster.stop()
    failures = record.failures()
    calls = dict(record.calls)
    copies = f"{2 * mirrors} mirrors (whole collection and status=running) and {HOT} job watches"
    figures = [
        Figure(f"failover: SIGKILL of one of 3 replicas to every copy equal to the folder, p50 ({kills} kills)",
               median(converged_s) * 1000, "ms", "<= 5000", {"seconds": converged_s},
               f"{copies} over {sessions:,} sessions, through the library (default backoff) and HAProxy "
               f"(reference configuration), replicas at default settings; relists per kill {relists}"),
        Figure("failover: SIGKILL to every copy equal to the folder, p99",
               percentile(converged_s, 99) * 1000, "ms", "<= 5000", {"seconds": converged_s}),
        Figure("failover: calls failed at the callers (get, list pages, long polls, watches)",
               float(len(failures)), "", "<= 0", {"calls": calls, "failures": [f.what for f in failures[:20]]},
               f"{sum(calls.values()):,} calls in all, {calls_during:,} between kills and convergence"),
    ]  # fmt: skip
    return figures, {"converged_s": converged_s, "relists": relists, "calls": calls}
