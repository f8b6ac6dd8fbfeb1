"""Support for the tests of the alerts and the dashboard: where the files are, the real promtool,
and the metric names a PromQL expression reads, taken from promql-parser's syntax tree (a real
parser: functions, label matchers, `by (...)`, ranges and offsets never pass for names)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from functools import cache
from typing import Any

import promql_parser
import pytest
import yaml

from tests.support import REPO

RULES = REPO / "deploy" / "prometheus" / "alerts.yaml"
RULE_TESTS = sorted((REPO / "deploy" / "prometheus" / "tests").glob("*.yaml"))
PROMETHEUSRULE_SCRIPT = REPO / "deploy" / "prometheus" / "prometheusrule.py"
MONITORING = REPO / "deploy" / "kubernetes" / "monitoring"
PROMETHEUSRULE = MONITORING / "prometheusrule.yaml"
PODMONITOR = MONITORING / "podmonitor.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboard.json"

# The route labels of streams and long polls: their durations are stream lifetimes, not latency.
STREAM_ROUTES = ("/api/v2/jobs?watch", "/api/v2/jobs/{job_id}?watch", "/api/v2/jobs/{job_id}?wait")
READ_ROUTES = ("/api/v2/jobs", "/api/v2/jobs/{job_id}", "/livez", "/healthz", "/readyz", "/metrics", "/openapi.json")
# A recording rule's name, by the Prometheus convention level:metric:operations.
RECORDED_NAME = re.compile(r"[a-z][a-z0-9_]*:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: apt-get install prometheus (.ci/run installs it)")
    return found


@cache
def rule_file() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return loaded


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_file()["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


@cache
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels() -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    queries = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in panels()
        for target in panel.get("targets", [])
    ]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            # label_values(selector, label) is Grafana's, not PromQL: its selector is.
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert match, f"variable {variable['name']}: unexpected query {query!r}"
            queries.append((f"variable {variable['name']!r}", match[1]))
    return queries


def as_promql(grafana_expr: str) -> str:
    """A Grafana query as plain PromQL: interval variables become a duration, other variables
    (used inside label matchers) a plain value."""
    expr = re.sub(r"\$\{?(__rate_interval|__interval|__range)\b\}?", "5m", grafana_expr)
    return re.sub(r"\$\{?\w+\}?", "x", expr)


def selectors(expr: str) -> list[promql_parser.VectorSelector]:
    """Every vector selector of an expression, those inside ranges, subqueries and calls too."""
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def selector_name(selector: promql_parser.VectorSelector) -> str:
    if selector.name:
        return selector.name
    names = [
        m.value for m in selector.matchers.matchers if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal
    ]
    if len(names) != 1:
        pytest.fail(f"{selector}: a selector without one exact metric name cannot be checked")
    return names[0]


def metric_names(expr: str) -> set[str]:
    return {selector_name(selector) for selector in selectors(expr)}


def exposed_names(exposition: str) -> set[str]:
    """The series names a /metrics text can hold: every sample's name, and for each family its
    TYPE says exists (a labelled family without a sample yet has only HELP and TYPE lines) the
    names its samples will have."""
    names: set[str] = set()
    suffixes = {
        "counter": ("",),  # the text format's TYPE line already names counters with _total
        "gauge": ("",),
        "untyped": ("",),
        "histogram": ("_bucket", "_count", "_sum"),
        "summary": ("", "_count", "_sum"),
    }
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.update(name + suffix for suffix in suffixes[kind])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def check_latency_selectors(where: str, expr: str) -> None:
    """Every selector of request durations excludes the stream routes and keeps some reads."""
    for selector in selectors(expr):
        if not (selector.name or "").startswith("sessions_http_request_duration_seconds"):
            continue
        kept = [*READ_ROUTES, *STREAM_ROUTES]
        for matcher in selector.matchers.matchers:
            if matcher.name == "route":
                kept = [route for route in kept if route_matches(matcher.op, matcher.value, route)]
        assert not set(kept) & set(STREAM_ROUTES), f"{where}: {selector} counts streams: {kept}"
        assert kept, f"{where}: {selector} keeps no read route"


def route_matches(op: promql_parser.MatchOp, value: str, route: str) -> bool:
    if op == promql_parser.MatchOp.Equal:
        return route == value
    if op == promql_parser.MatchOp.NotEqual:
        return route != value
    # Prometheus anchors label regexes at both ends.
    found = re.fullmatch(value, route) is not None
    return found if op == promql_parser.MatchOp.Re else not found
