"""GET /metrics: Prometheus text, parsed with prometheus-client's own parser, whose figures move
as requests, cache misses, evictions and file changes happen (docs/contract.md#probes)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.api.routes import LABELS
from app.ops.metrics import Buckets, cumulative
from tests.support import Server, put_session, start_server, write_atomic, write_in_place
from tests.support.ops import (
    JOB_ROUTE,
    LABEL_NAME,
    LIST_ROUTE,
    METRIC_NAME,
    Scrape,
    assert_histogram_consistent,
    histogram_buckets,
    scrape,
    wait_for_scrape,
)

POLL = {"SESSIONS_WATCH": "poll", "SESSIONS_POLL_INTERVAL_MS": "50"}

# family name (as the parser reports it, without _total) -> type
FAMILIES = [
    ("sessions_http_requests", "counter"),
    ("sessions_http_request_duration_seconds", "histogram"),
    ("sessions_cache_entries", "gauge"),
    ("sessions_cache_bytes", "gauge"),
    ("sessions_cache_hits", "counter"),
    ("sessions_cache_misses", "counter"),
    ("sessions_cache_evictions", "counter"),
    ("sessions_cache_loads", "counter"),
    ("sessions_indexed", "gauge"),
    ("sessions_invalid_files", "gauge"),
    ("sessions_warmup_duration_seconds", "gauge"),
    ("sessions_watcher_events", "counter"),
    ("sessions_changes", "counter"),
    ("sessions_reload_lag_seconds", "histogram"),
    ("sessions_rescans", "counter"),
    ("sessions_folder_up", "gauge"),
    ("sessions_poll_hot_files", "gauge"),
    ("sessions_poll_probes", "counter"),
    ("sessions_poll_listings", "counter"),
    ("sessions_load_unavailable", "counter"),
    ("sessions_event_loop_lag_seconds", "histogram"),
]


def job_requests(scraped: Scrape, status: str = "200", method: str = "GET") -> float:
    return scraped.value("sessions_http_requests_total", route=JOB_ROUTE, method=method, status=status)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that write no files: each measures counters as they move from a
    scrape it takes itself, never as totals since the start."""
    folder = tmp_path_factory.mktemp("sessions")
    put_session(folder, "a")
    put_session(folder, "known-1")
    server = start_server(folder, tmp_path_factory.mktemp("logs"))
    yield server
    server.stop()


# --- the exposition --------------------------------------------------------------------------------


def test_the_exposition_parses_and_follows_the_naming_conventions(shared: Server) -> None:
    server = shared
    before = job_requests(scrape(server))
    assert server.get("/api/v2/jobs/a").status_code == 200
    scraped = wait_for_scrape(server, lambda s: job_requests(s) == before + 1, what="the request to be counted")
    assert server.get("/metrics").headers["cache-control"] == "no-store"
    for family in scraped.families.values():
        assert METRIC_NAME.fullmatch(family.name), family.name
        # One namespace, and prometheus-client's standard process figures (restarts, memory).
        assert family.name.startswith(("sessions_", "process_")), family.name
        assert family.documentation, f"{family.name} has no HELP"
        if family.type == "counter":
            assert not family.name.endswith("_total"), family.name  # the parser strips it; no _total_total
            assert {sample.name for sample in family.samples} <= {f"{family.name}_total", f"{family.name}_created"}
        for sample in family.samples:
            assert all(LABEL_NAME.fullmatch(label) for label in sample.labels), sample
        if family.name.endswith("_bytes"):
            assert family.type == "gauge", family.name
    # prometheus-client's parser keeps the first of duplicated families: none may be dropped.
    names = [line.split()[2] for line in scraped.text.splitlines() if line.startswith("# TYPE ")]
    assert len(names) == len(set(names)), names


@pytest.mark.parametrize(("family", "kind"), FAMILIES)
def test_every_figure_the_spec_names_is_exposed(shared: Server, family: str, kind: str) -> None:
    server = shared
    server.get("/api/v2/jobs/a")
    scraped = wait_for_scrape(server, lambda s: family in s.families, what=family)
    assert scraped.families[family].type == kind


# --- requests ----------------------------------------------------------------------------------------

# (path, route label, status): raw ids and bad paths must collapse to the template.
REQUESTS = [
    ("/api/v2/jobs/known-1", JOB_ROUTE, 200),
    ("/api/v2/jobs/unknown-7f3a9c", JOB_ROUTE, 404),
    ("/api/v2/jobs/unknown-0b11e2", JOB_ROUTE, 404),
    ("/api/v2/jobs/..%2Fetc%2Fpasswd", JOB_ROUTE, 400),
    ("/api/v2/jobs/.hidden", JOB_ROUTE, 400),
    ("/api/v2/jobs", LIST_ROUTE, 200),
    ("/api/v2/jobs/", LIST_ROUTE, 200),
    ("/api/v2/jobs?limit=0", LIST_ROUTE, 400),
    ("/livez", "/livez", 200),
    ("/healthz", "/healthz", 200),
    ("/readyz", "/readyz", 200),
    ("/openapi.json", "/openapi.json", 200),
    ("/no/such/route-123abc", "unmatched", 404),
]


def test_requests_are_counted_by_route_template_and_status(shared: Server) -> None:
    server = shared
    before = scrape(server)
    expected: dict[tuple[str, str], int] = {}
    for path, route, status in REQUESTS:
        assert server.raw("GET", path).status_code == status, path
        expected[(route, str(status))] = expected.get((route, str(status)), 0) + 1

    def moved(scraped: Scrape) -> bool:
        return all(
            scraped.value("sessions_http_requests_total", route=route, method="GET", status=status)
            - before.value("sessions_http_requests_total", route=route, method="GET", status=status)
            == count
            for (route, status), count in expected.items()
        )

    scraped = wait_for_scrape(server, moved, what="every request to be counted under its template")
    routes = scraped.label_values("route")
    assert routes <= LABELS
    for raw in ("known-1", "unknown-7f3a9c", "unknown-0b11e2", "passwd", ".hidden", "route-123abc", "?limit"):
        assert raw not in scraped.text, f"the raw path piece {raw!r} leaked into the exposition"


def test_head_requests_are_counted_under_their_method(shared: Server) -> None:
    server = shared
    before = job_requests(scrape(server), method="HEAD")
    for _ in range(2):
        assert server.client.head("/api/v2/jobs/a").status_code == 200
    wait_for_scrape(server, lambda s: job_requests(s, method="HEAD") == before + 2, what="HEAD requests")


def test_the_latency_histogram_counts_every_request_in_a_bucket(
    sessions_dir: Path, serve: Callable[..., Server]
) -> None:
    put_session(sessions_dir, "a")
    server = serve(sessions_dir)
    count = 25
    for _ in range(count):
        assert server.get("/api/v2/jobs/a").status_code == 200
    assert server.get("/api/v2/jobs/nope").status_code == 404
    scraped = wait_for_scrape(server, lambda s: job_requests(s) == count, what="the requests")
    name = "sessions_http_request_duration_seconds"
    labels = {"route": JOB_ROUTE, "method": "GET", "status": "200"}
    assert assert_histogram_consistent(scraped, name, **labels) == count
    assert assert_histogram_consistent(scraped, name, route=JOB_ROUTE, method="GET", status="404") == 1
    total = scraped.value(f"{name}_sum", **labels)
    assert 0 < total < count * 1.0, total  # seconds, not milliseconds
    bounds = [bound for bound, _ in histogram_buckets(scraped, name, **labels)]
    assert bounds[0] <= 0.001 and bounds[-2] >= 1.0, bounds  # fine enough for a cache hit, wide enough for a miss
    # a loopback cache hit takes well under 100 ms: most observations sit in the low buckets
    under_100ms = dict(histogram_buckets(scraped, name, **labels))[0.1]
    assert under_100ms >= count * 0.8, histogram_buckets(scraped, name, **labels)


def test_a_scrape_is_itself_counted_by_the_next_one(shared: Server) -> None:
    server = shared
    first = scrape(server).value("sessions_http_requests_total", route="/metrics", method="GET", status="200")
    wait_for_scrape(
        server,
        lambda s: s.value("sessions_http_requests_total", route="/metrics", method="GET", status="200") >= first + 1,
        what="the first scrape to be counted",
    )


# --- the cache ---------------------------------------------------------------------------------------


def test_cache_hits_misses_and_evictions_move(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    ids = [f"j{n}" for n in range(5)]
    for n, job_id in enumerate(ids):
        put_session(sessions_dir, job_id, updated_at=f"2024-01-0{n + 1}T00:00:00Z")
    server = serve(sessions_dir, env={"SESSIONS_CACHE_MAX_ENTRIES": "2", "SESSIONS_WATCH": "off"})
    warm = scrape(server)
    assert warm.value("sessions_cache_entries") == 2
    assert warm.value("sessions_indexed") == 5

    for job_id in ids:  # the first round brings each id in once
        assert server.get(f"/api/v2/jobs/{job_id}").status_code == 200
    before = scrape(server)
    bodies = {}
    # Five ids cycled through an LRU of two: every read of the second round is a miss, a load
    # from disk, and an eviction.
    for job_id in ids:
        response = server.get(f"/api/v2/jobs/{job_id}")
        assert response.status_code == 200
        bodies[job_id] = response.content
    after = scrape(server)

    def delta(name: str) -> float:
        return after.value(name) - before.value(name)

    assert delta("sessions_cache_misses_total") == 5
    assert delta("sessions_cache_loads_total") == 5
    assert delta("sessions_cache_evictions_total") == 5
    assert delta("sessions_cache_hits_total") == 0
    assert after.value("sessions_cache_entries") == 2
    # the two most recently read documents are the cache's bytes
    assert after.value("sessions_cache_bytes") == len(bodies["j3"]) + len(bodies["j4"])

    for _ in range(3):  # the most recent one again: hits only
        assert server.get("/api/v2/jobs/j4").status_code == 200
    again = scrape(server)
    assert again.value("sessions_cache_hits_total") - after.value("sessions_cache_hits_total") == 3
    assert again.value("sessions_cache_misses_total") == after.value("sessions_cache_misses_total")
    assert again.value("sessions_cache_evictions_total") == after.value("sessions_cache_evictions_total")


def test_concurrent_misses_for_one_id_load_it_once(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    for n in range(3):
        put_session(sessions_dir, f"j{n}", updated_at=f"2024-01-0{n + 1}T00:00:00Z")
    server = serve(sessions_dir, env={"SESSIONS_CACHE_MAX_ENTRIES": "1", "SESSIONS_WATCH": "off"})
    assert server.get("/api/v2/jobs/j2").status_code == 200  # j0 is evicted now
    before = scrape(server)
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: client.get("/api/v2/jobs/j0").status_code, range(16)))
    assert statuses == [200] * 16
    after = scrape(server)
    loads = after.value("sessions_cache_loads_total") - before.value("sessions_cache_loads_total")
    assert 1 <= loads <= after.value("sessions_cache_misses_total") - before.value("sessions_cache_misses_total")


# --- the folder --------------------------------------------------------------------------------------


def total_listed(server: Server) -> int:
    response = server.get("/api/v2/jobs", params={"limit": 1})
    assert response.status_code == 200
    return int(response.headers["x-total-count"])


@pytest.mark.parametrize("env", [{}, POLL], ids=["native", "poll"])
def test_sessions_indexed_and_invalid_files_follow_file_changes(
    sessions_dir: Path, serve: Callable[..., Server], env: dict[str, str]
) -> None:
    for n in range(3):
        put_session(sessions_dir, f"s{n}")
    server = serve(sessions_dir, env=env)

    def figures(indexed: int, invalid: int) -> Callable[[Scrape], bool]:
        return lambda s: s.value("sessions_indexed") == indexed and s.value("sessions_invalid_files") == invalid

    # (what happens to the folder, sessions indexed, invalid files) after it
    steps: list[tuple[str, Callable[[], object], int, int]] = [
        ("a new session", lambda: put_session(sessions_dir, "s3"), 4, 0),
        ("a file that is not JSON", lambda: write_atomic(sessions_dir / "bad.json", b"{nope"), 4, 1),
        ("a second invalid file", lambda: write_atomic(sessions_dir / "arr.json", b"[]"), 4, 2),
        ("the first one fixed", lambda: put_session(sessions_dir, "bad"), 5, 1),
        ("the second one deleted", lambda: (sessions_dir / "arr.json").unlink(), 5, 0),
        ("a session deleted", lambda: (sessions_dir / "s0.json").unlink(), 4, 0),
        ("a served session turns invalid (stale)", lambda: write_in_place(sessions_dir / "s1.json", b"{"), 4, 1),
        ("and valid again", lambda: put_session(sessions_dir, "s1"), 4, 0),
    ]
    assert wait_for_scrape(server, figures(3, 0), what="the warm figures")
    for what, change, indexed, invalid in steps:
        change()
        wait_for_scrape(server, figures(indexed, invalid), what=f"{what}: indexed {indexed}, invalid {invalid}")
        assert total_listed(server) == indexed, what  # the gauge agrees with the list


def test_warm_up_duration_is_set(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    for n in range(200):
        put_session(sessions_dir, f"w{n:03d}")
    server = serve(sessions_dir)
    scraped = scrape(server)
    seconds = scraped.value("sessions_warmup_duration_seconds")
    assert 0 < seconds < 60, seconds
    assert scraped.value("sessions_ready") == 1
    assert scraped.value("sessions_indexed") == 200


# --- the watcher -------------------------------------------------------------------------------------


def test_native_watcher_events_changes_and_reload_lag_move(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    put_session(sessions_dir, "a")
    server = serve(sessions_dir, env={"SESSIONS_RESCAN_INTERVAL_S": "0"})
    before = wait_for_scrape(server, lambda s: s.value("sessions_watcher_up") == 1, what="the native watcher")

    def moved(name: str, by: float = 1, **labels: str) -> Callable[[Scrape], bool]:
        return lambda s: s.value(name, **labels) - before.value(name, **labels) >= by

    put_session(sessions_dir, "b")
    wait_for_scrape(server, moved("sessions_watcher_events_total"), what="watcher events")
    wait_for_scrape(server, moved("sessions_changes_total", change="added"), what="an added change")
    after = wait_for_scrape(server, moved("sessions_reload_lag_seconds_count"), what="a reload lag")
    count = assert_histogram_consistent(after, "sessions_reload_lag_seconds")
    assert count >= 1
    assert 0 <= after.value("sessions_reload_lag_seconds_sum") < 5 * count  # freshness: well under a second each

    put_session(sessions_dir, "a", status="completed")
    wait_for_scrape(server, moved("sessions_changes_total", change="modified"), what="a modified change")
    (sessions_dir / "b.json").unlink()
    wait_for_scrape(server, moved("sessions_changes_total", change="deleted"), what="a deleted change")
    final = scrape(server)
    assert final.value("sessions_rescans_total") == 0  # rescans off: the events did it all
    assert final.value("sessions_reload_lag_seconds_count") >= before.value("sessions_reload_lag_seconds_count") + 2


def test_poll_mode_polls_and_changes_move(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    """A poll period stats the folder and the hot files only; a listing follows a change of the
    folder; the full rescan keeps its own interval (docs/network-volumes.md)."""
    put_session(sessions_dir, "hot", status="running")
    put_session(sessions_dir, "cold", status="completed")
    server = serve(sessions_dir, env={**POLL, "SESSIONS_RESCAN_INTERVAL_S": "0.5"})
    before = scrape(server)
    assert before.value("sessions_watcher_up") == 0  # no native watcher in poll mode
    assert before.value("sessions_poll_hot_files") == 1  # the unfinished session only
    moved = wait_for_scrape(
        server,
        lambda s: s.value("sessions_poll_probes_total") >= before.value("sessions_poll_probes_total") + 3,
        what="hot files polled every 50 ms",
    )
    put_session(sessions_dir, "p")
    after = wait_for_scrape(
        server,
        lambda s: (
            s.value("sessions_changes_total", change="added") == 1 and s.value("sessions_reload_lag_seconds_count") >= 1
        ),
        what="the poll to find the new file",
    )
    assert after.value("sessions_poll_listings_total") > moved.value("sessions_poll_listings_total")
    assert after.value("sessions_poll_hot_files") == 2  # the new one is unfinished too
    assert after.value("sessions_reload_lag_seconds_sum") < 5
    wait_for_scrape(server, lambda s: s.value("sessions_rescans_total") >= 1, what="a full rescan")
    assert scrape(server).value("sessions_rescan_duration_seconds_total") > 0


# --- the event loop ------------------------------------------------------------------------------------


def test_event_loop_lag_histogram_is_measured(shared: Server) -> None:
    server = shared
    first = scrape(server).value("sessions_event_loop_lag_seconds_count")
    scraped = wait_for_scrape(
        server,
        lambda s: s.value("sessions_event_loop_lag_seconds_count") >= first + 2,
        what="the monitor to measure the lag",
    )
    count = assert_histogram_consistent(scraped, "sessions_event_loop_lag_seconds")
    # an idle loop is late by far less than a second on average
    assert scraped.value("sessions_event_loop_lag_seconds_sum") < count * 1.0


def test_a_histograms_own_buckets_count_as_prometheus_le_does() -> None:
    """An observation on a bound counts in that bucket; the exposed buckets are cumulative."""
    buckets = Buckets((0.1, 1.0))
    for value in (0.1, 0.05, 1.5):
        buckets.observe(value)
    assert cumulative(buckets.bounds, buckets.counts) == [("0.1", 2), ("1.0", 2), ("+Inf", 3)]
    assert buckets.sum == 1.65
