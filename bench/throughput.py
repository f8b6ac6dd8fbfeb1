"""Throughput and latency under wrk: GET by id against the references, and list pages at two
folder sizes. Servers run side by side; rounds alternate which one goes first."""

from __future__ import annotations

import random
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from bench import probe, wrk
from bench.report import Figure, median, ratio
from bench.server import Server

Target = tuple[str, Server, Path]  # name, server, paths file


def alternate(targets: list[Target], rounds: int, seconds: float, log: Callable[[str], None]) -> dict[str, Any]:
    """wrk each target once per round, the order rotating; a short warm-up run first."""
    for _, server, paths in targets:
        wrk.run(server.base_url, paths, 1)
    runs: dict[str, list[wrk.WrkResult]] = {name: [] for name, _, _ in targets}
    for r in range(rounds):
        shift = r % len(targets)
        for name, server, paths in targets[shift:] + targets[:shift]:
            result = wrk.run(server.base_url, paths, seconds, seed=r + 1, server_pid=server.pid)
            runs[name].append(result)
            log(f"  round {r + 1}/{rounds} {name}: {result.rps:,.0f} req/s, p99 {result.p99_ms:.2f} ms, "
                f"errors {result.errors}, cpu: wrk {result.client_cpu:.0%}, server {result.server_cpu:.0%}, "
                f"others on its core {result.core_other:.0%}")  # fmt: skip
    return {
        name: {
            "rps_median": median([x.rps for x in results]),
            "p99_ms_median": median([x.p99_ms for x in results]),
            "p50_ms_median": median([x.p50_ms for x in results]),
            "errors": sum(x.errors for x in results),
            "wrk_cpu_max": max(x.client_cpu for x in results),
            "core_other_max": max(x.core_other for x in results),
            "rounds": [asdict(x) | {"rps": x.rps} for x in results],
        }
        for name, results in runs.items()
    }


def id_paths(ids: list[str]) -> list[str]:
    return [f"/api/v2/jobs/{job_id}" for job_id in ids]


def get_by_id_figures(stats: dict[str, Any], sessions: int) -> list[Figure]:
    service, limit, lazy = stats["service"], stats["limit"], stats["lazy"]
    errors = service["errors"] + limit["errors"] + lazy["errors"]
    rps = {name: round(stats[name]["rps_median"]) for name in ("service", "limit", "lazy")}
    common = {"rps_median": rps, "errors": errors}
    return [
        Figure(f"GET by id ({sessions:,} sessions) vs limit", ratio(service["rps_median"], limit["rps_median"]),
               "x", ">= 0.9", common, f"req/s medians {rps}; {_noise(stats)}"),
        Figure(f"GET by id ({sessions:,} sessions) vs lazy", ratio(service["rps_median"], lazy["rps_median"]),
               "x", ">= 8", common),
    ]  # fmt: skip


def _noise(stats: dict[str, Any]) -> str:
    worst = max(x["core_other_max"] for x in stats.values())
    return f"other processes took at most {worst:.0%} of the server core in a run" + (
        " (noisy machine: rerun on a quiet one)" if worst > 0.1 else ""
    )


def _next_cursor(headers: dict[str, str]) -> str | None:
    link = headers.get("link", "")
    if 'rel="next"' not in link:
        return None
    url = link.split(";")[0].strip().strip("<>")
    cursor = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("cursor")
    return cursor[0] if cursor else None


def list_paths(port: int, pages: int = 24, seed: int = 7, listed: list[str] | None = None) -> list[str]:
    """A mix of full list pages: the first page, filtered first pages, and pages deep in the
    listing (cursors collected by walking it with big pages); each checked to answer 200. Every
    page is full at both folder sizes, so that 100,000 vs 1,000 compares the same work.
    `listed`, if given, receives every job id in list order (newest first)."""
    cursors: list[str] = []
    cursor: str | None = None
    for _ in range(10_000):
        query = "limit=1000" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
        status, headers, body = probe.get(port, f"/api/v2/jobs?{query}", timeout_s=30)
        if status != 200:
            raise RuntimeError(f"walking the listing: {status} for {query}")
        if listed is not None:
            listed.extend(summary["job_id"] for summary in orjson.loads(body))
        cursor = _next_cursor(headers)
        if cursor is None:
            break
        cursors.append(cursor)
    if len(cursors) < pages:  # a small folder: walk it in pages of 100 instead
        cursors, cursor = [], None
        for _ in range(pages):
            query = "limit=100" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
            status, headers, _ = probe.get(port, f"/api/v2/jobs?{query}", timeout_s=30)
            cursor = _next_cursor(headers) if status == 200 else None
            if cursor is None:
                break
            cursors.append(cursor)
    rng = random.Random(seed)
    chosen = rng.sample(cursors, min(pages, len(cursors)))
    paths = [
        "/api/v2/jobs?limit=100",
        "/api/v2/jobs?limit=100&status=running",
        "/api/v2/jobs?limit=100&status=pending,pending_hitl,pending_review",
        "/api/v2/jobs?limit=100&include_saved=false",
        # A user's sessions fill a page of 100 only in the big folder (48 users): a page of 10
        # is full at both sizes, so the p99 comparison weighs the same work at both.
        "/api/v2/jobs?limit=10&user_id=user-007",
        "/api/v2/jobs?limit=10&user_id=user-031&include_saved=false",
        *(f"/api/v2/jobs?limit=100&cursor={urllib.parse.quote(c)}" for c in chosen),
    ]
    for path in paths:
        status, _, body = probe.get(port, path, timeout_s=30)
        if status != 200:
            raise RuntimeError(f"list page {path}: status {status}: {body[:200]!r}")
    return paths


def distinct_paths(paths: list[str], copies: int = 200) -> list[str]:
    """The same pages under thousands of distinct query strings (an extra parameter the service
    ignores), so that its cache of rendered pages (64 entries) cannot answer them: every request
    renders its page. What a poller of one page pays is the cached figure; this is the other end."""
    return [f"{path}&n={n}" for n in range(copies) for path in paths]


def list_figures(stats: dict[str, Any], big: int, small: int) -> list[Figure]:
    big_list, big_get, small_list = stats["list-big"], stats["get-big"], stats["list-small"]
    errors = big_list["errors"] + big_get["errors"] + small_list["errors"]
    return [
        Figure(f"list page (limit=100, {big:,} sessions) vs GET by id", ratio(big_list["rps_median"],
               big_get["rps_median"]), "x", ">= 0.5",
               {"errors": errors, "list_rps": big_list["rps_median"], "get_rps": big_get["rps_median"]},
               f"req/s medians: list {big_list['rps_median']:,.0f}, GET {big_get['rps_median']:,.0f}; {_noise(stats)}"),
        Figure(f"list page p99, {big:,} vs {small:,} sessions", ratio(big_list["p99_ms_median"],
               small_list["p99_ms_median"]), "x", "<= 1.2",
               {"errors": errors, "p99_ms": [big_list["p99_ms_median"], small_list["p99_ms_median"]]},
               f"p99 medians: {big_list['p99_ms_median']:.2f} ms vs {small_list['p99_ms_median']:.2f} ms"),
        Figure(f"list page rendered on every request ({big:,} sessions) vs GET by id",
               ratio(stats["list-render-big"]["rps_median"], big_get["rps_median"]), "x", ">= 0.5",
               {"list_rps": stats["list-render-big"]["rps_median"]},
               f"req/s median {stats['list-render-big']['rps_median']:,.0f}: distinct query strings defeat the "
               "cache of rendered pages; p99 "
               f"{stats['list-render-big']['p99_ms_median']:.2f} ms vs "
               f"{stats['list-render-small']['p99_ms_median']:.2f} ms at {small:,} sessions"),
    ]  # fmt: skip
