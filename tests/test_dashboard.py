"""The Grafana dashboard (deploy/grafana/dashboard.json): a JSON model Grafana imports as it is
(its data source is a variable, nothing names one Grafana's own data sources), whose panels fit
the grid, and whose every query is PromQL that parses, per replica, and times reads only."""

from __future__ import annotations

import re
from typing import Any

import promql_parser

from tests.support.monitoring import as_promql, check_latency_selectors, dashboard, dashboard_queries, panels, selectors

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_COLUMNS = 24
PANEL_TYPES = {"row", "timeseries", "stat"}


def test_dashboard_is_a_grafana_json_model() -> None:
    model = dashboard()
    assert isinstance(model["schemaVersion"], int) and model["schemaVersion"] >= 36
    assert model["id"] is None, "an id belongs to one Grafana instance; import assigns it"
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", model["uid"]), "Grafana's uid: 1-40 of A-Za-z0-9_-"
    assert model["title"] and isinstance(model["panels"], list) and model["panels"]
    assert model["time"] == {"from": "now-6h", "to": "now"}
    assert isinstance(model["templating"]["list"], list)
    assert model["refresh"] in {"", "30s", "1m", "5m"}
    requires = {(item["type"], item["id"]) for item in model.get("__requires", [])}
    assert {("panel", panel["type"]) for panel in panels() if panel["type"] != "row"} <= requires


def test_the_data_source_is_a_variable() -> None:
    model = dashboard()
    variables = {variable["name"]: variable for variable in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    # Import needs no input then, and provisioning (which cannot fill __inputs) works too.
    assert "__inputs" not in model
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]


def test_panels_have_unique_ids_and_fit_the_grid() -> None:
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels():
        assert panel["type"] in PANEL_TYPES, panel["type"]
        assert panel["title"], panel
        grid = panel["gridPos"]
        assert all(isinstance(grid[key], int) and grid[key] >= 0 for key in ("x", "y", "w", "h")), panel["title"]
        assert grid["w"] >= 1 and grid["h"] >= 1 and grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_every_query_is_promql_that_parses() -> None:
    for panel in panels():
        if panel["type"] == "row":
            continue
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
    for where, expr in dashboard_queries():
        try:
            promql_parser.parse(as_promql(expr))
        except ValueError as exc:
            raise AssertionError(f"{where}: {expr}: {exc}") from exc


def test_every_query_follows_the_job_and_replica_variables() -> None:
    for where, expr in dashboard_queries():
        if where.startswith("variable"):
            continue
        for selector in selectors(as_promql(expr.replace("$job", "JOB").replace("$instance", "INSTANCE"))):
            matchers = {(m.name, m.value) for m in selector.matchers.matchers if m.op == promql_parser.MatchOp.Re}
            assert {("job", "JOB"), ("instance", "INSTANCE")} <= matchers, f"{where}: {selector}"


def test_latency_panels_leave_out_streams_and_long_polls() -> None:
    checked = 0
    for where, expr in dashboard_queries():
        check_latency_selectors(where, as_promql(expr))
        checked += "sessions_http_request_duration_seconds" in expr
    assert checked >= 2


def titles(kind: str) -> list[str]:
    return [panel["title"] for panel in panels() if panel["type"] == kind]


def test_the_dashboard_covers_what_an_operator_watches() -> None:
    assert titles("row") == ["Overview", "Requests", "Cache", "Folder and watcher", "Streams", "Event loop and process"]
    legends: list[Any] = [target.get("legendFormat", "") for panel in panels() for target in panel.get("targets", [])]
    assert sum("{{instance}}" in legend for legend in legends) >= 20, "figures are shown per replica"
    assert any("{{route}}" in legend for legend in legends), "requests by route"
