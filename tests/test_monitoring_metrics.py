"""The alerts and the dashboard read metrics the service really exports: a real server's /metrics
is scraped, and every metric named in a rule or a dashboard query must be there, so a rename in
app/ops/metrics.py fails here rather than silently blanking an alert. Also the two figures that
exist for the alerts: the watch mode, and the process metrics behind the restart alert."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.store.watchmode import events_trusted, filesystem_type
from tests.support import Server, put_session, start_server, wait_until
from tests.support.monitoring import (
    as_promql,
    dashboard_queries,
    exposed_names,
    metric_names,
    recorded_names,
    rules,
)
from tests.support.ops import parse


@dataclass(frozen=True)
class Started:
    server: Server
    folder: Path
    before: float  # the wall clock just before the process was started


@pytest.fixture(scope="module")
def auto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    """One server in the default watch mode (auto, set explicitly) for the tests that only read."""
    folder = tmp_path_factory.mktemp("sessions")
    put_session(folder, "job-1")
    before = time.time()
    server = start_server(folder, tmp_path_factory.mktemp("logs"), env={"SESSIONS_WATCH": "auto"})
    yield Started(server, folder, before)
    server.stop()


def used_metrics() -> dict[str, set[str]]:
    """metric name -> where it is used (rules and dashboard), recording rules' own names left out."""
    used: dict[str, set[str]] = {}
    for rule in rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"rule {rule.get('alert') or rule['record']}")
    for where, expr in dashboard_queries():
        for name in metric_names(as_promql(expr)):
            used.setdefault(name, set()).add(where)
    return {name: places for name, places in used.items() if name not in recorded_names()}


def metrics_text(server: Server) -> str:
    response = server.get("/metrics")
    assert response.status_code == 200, response.text
    return response.text


def test_the_name_parser_reads_names_only() -> None:
    """Guard for the test below: functions, labels, grouping, ranges and offsets are no names."""
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{route!~".+[?](watch|wait)"}[5m])))'
        " > on (instance) group_left (mode) b_total offset 5m"
        ' and present_over_time({__name__="c"}[1h]) unless ignoring (kind) level:d:rate5m'
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "level:d:rate5m"}
    assert metric_names(as_promql('sum(rate(e{job=~"$job"}[$__rate_interval]))')) == {"e"}


def test_the_exposition_reader_counts_families_without_samples() -> None:
    text = '# HELP x_total X.\n# TYPE x_total counter\n# HELP h Time.\n# TYPE h histogram\ng{mode="auto"} 1.0\n'
    assert exposed_names(text) == {"x_total", "h_bucket", "h_count", "h_sum", "g"}


def test_every_metric_the_alerts_and_dashboard_read_is_exported(auto: Started) -> None:
    server = auto.server
    assert server.get("/api/v2/jobs/job-1").status_code == 200
    exposed = exposed_names(metrics_text(server))
    used = used_metrics()
    assert len(used) >= 30, sorted(used)
    missing = {name: sorted(places) for name, places in used.items() if name not in exposed}
    assert not missing, "metrics the rules or the dashboard read, not in /metrics:\n" + "\n".join(
        f"  {name}: {', '.join(places)}" for name, places in sorted(missing.items())
    )


@pytest.mark.parametrize(
    ("setting", "mode", "reason"),
    [
        ("auto", "native", "local filesystem"),  # the shared server's mode
        ("native", "native", "set by SESSIONS_WATCH"),
        ("poll", "poll", "set by SESSIONS_WATCH"),
        ("off", "off", "set by SESSIONS_WATCH"),
    ],
)
def test_the_watch_mode_is_exported(
    setting: str,
    mode: str,
    reason: str,
    sessions_dir: Path,
    serve: Callable[..., Server],
    request: pytest.FixtureRequest,
) -> None:
    if setting == "auto":
        shared: Started = request.getfixturevalue("auto")
        server, sessions_dir = shared.server, shared.folder
    else:
        server = serve(sessions_dir, env={"SESSIONS_WATCH": setting})
    scraped = parse(metrics_text(server))
    filesystem = filesystem_type(sessions_dir.resolve())
    assert filesystem is not None and events_trusted(filesystem)  # a test's temp folder is local
    labels = {"mode": mode, "setting": setting, "filesystem": filesystem, "reason": reason}
    assert scraped.samples("sessions_watch_mode") == [(labels, 1.0)]
    if mode == "native":
        # What JobSessionsNativeWatcherDown tells apart: up in auto mode, 0 by design otherwise.
        wait_until(lambda: parse(metrics_text(server)).value("sessions_watcher_up") == 1, 10, what="watcher up")
    else:
        assert scraped.value("sessions_watcher_up") == 0


def test_process_metrics_describe_the_server_process(auto: Started) -> None:
    before, server = auto.before, auto.server
    scraped = parse(metrics_text(server))
    started = scraped.value("process_start_time_seconds")
    # prometheus-client adds the start in clock ticks (1/100 s) since boot to the boot time of
    # /proc/stat, which is in whole seconds: the sum can be up to 1.01 s early.
    assert before - 1.5 <= started <= time.time(), (before, started)
    assert scraped.value("process_resident_memory_bytes") > 10 * 2**20
    assert scraped.value("process_open_fds") > 0
