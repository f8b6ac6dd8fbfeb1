"""The Prometheus rules (deploy/prometheus/alerts.yaml) and their Prometheus Operator form: checked
and unit-tested by the real promtool, every alert shown firing and not firing, and the
PrometheusRule and PodMonitor (custom resources, outside the Kubernetes schemas test_deploy.py
validates against) checked against the structure the Operator's CRDs define."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support import REPO
from tests.support.monitoring import (
    MONITORING,
    PODMONITOR,
    PROMETHEUSRULE,
    PROMETHEUSRULE_SCRIPT,
    RECORDED_NAME,
    RULE_TESTS,
    RULES,
    alerts,
    check_latency_selectors,
    metric_names,
    promtool,
    recorded_names,
    rule_file,
    rules,
)

SEVERITIES = {"critical", "warning", "info"}
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
# The Operator's PrometheusRule CRD (monitoring.coreos.com/v1, openAPIV3Schema of `spec`), with
# unknown fields refused: the API server would silently prune them (a misspelt `annotation:`
# would just vanish), so here they fail instead.
PROMETHEUSRULE_SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": {"type": "string", "pattern": DURATION},
                    "query_offset": {"type": "string", "pattern": DURATION},
                    "limit": {"type": "integer"},
                    "labels": LABELS,
                    # The CRD's ^(?i)(abort|warn)?$, its flag moved first, where Python's re takes it.
                    "partial_response_strategy": {"type": "string", "pattern": "(?i)^(abort|warn)?$"},
                    "rules": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["expr"],
                            "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                            "properties": {
                                "record": {"type": "string"},
                                "alert": {"type": "string"},
                                "expr": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                                "for": {"type": "string", "pattern": DURATION},
                                "keep_firing_for": {"type": "string", "minLength": 1, "pattern": DURATION},
                                "labels": LABELS,
                                "annotations": LABELS,
                            },
                        },
                    },
                },
            },
        }
    },
}
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def run_promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# --- promtool ------------------------------------------------------------------------------------


def test_promtool_checks_the_rule_file() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.stem)
def test_promtool_unit_tests_pass(path: Path) -> None:
    result = run_promtool("test", "rules", path.name, cwd=path.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_failing_unit_test_fails(tmp_path: Path) -> None:
    """Guard for the test above: promtool's exit status does report a wrong expectation."""
    test = load_yaml(RULE_TESTS[0])
    test["rule_files"] = [str(RULES)]
    for case in test["tests"]:
        for check in case.get("alert_rule_test", []):
            if check["exp_alerts"]:
                check["alertname"] = "JobSessionsNoSuchAlert"
    broken = tmp_path / "broken_test.yaml"
    broken.write_text(yaml.safe_dump(test), encoding="utf-8")
    result = run_promtool("test", "rules", broken.name, cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert "FAILED" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        test = load_yaml(path)
        assert [Path(f).name for f in test["rule_files"]] == [RULES.name], f"{path.name} tests another file"
        for case in test["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check["exp_alerts"] else silent).add(check["alertname"])
    names = {alert["alert"] for alert in alerts()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown staying silent (a near miss)"
    assert (firing | silent) - names == set(), "tests of alerts that do not exist"


# --- the rules themselves ------------------------------------------------------------------------


def test_every_alert_says_what_it_means_and_what_to_do() -> None:
    names = [alert["alert"] for alert in alerts()]
    assert len(names) == len(set(names)), "alert names repeat"
    for alert in alerts():
        name = alert["alert"]
        assert re.fullmatch(r"JobSessions[A-Z][A-Za-z]+", name), name
        assert alert.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity"
        annotations = alert.get("annotations", {})
        assert set(annotations) >= {"summary", "description"}, f"{name}: {sorted(annotations)}"
        assert "{{ $labels.instance }}" in annotations["summary"], f"{name}: the summary names the replica"
        # Static text: promtool's unit tests compare it whole, and a template there has no test.
        assert "{{" not in annotations["description"], f"{name}: description"
        assert len(annotations["description"]) > 150, f"{name}: the description must say what to do"


def test_recording_rules_are_named_level_metric_operation_and_used() -> None:
    used = set().union(*(metric_names(rule["expr"]) for rule in rules()))
    for name in recorded_names():
        assert RECORDED_NAME.fullmatch(name), name
        assert name in used, f"{name} is recorded but no rule uses it"


def test_latency_rules_leave_out_streams_and_long_polls() -> None:
    for rule in rules():
        check_latency_selectors(rule.get("alert") or rule["record"], rule["expr"])


def test_latency_check_catches_stream_routes() -> None:
    """Guard for the check above."""
    with pytest.raises(AssertionError):
        check_latency_selectors("guard", "rate(sessions_http_request_duration_seconds_bucket[5m])")
    with pytest.raises(AssertionError):
        check_latency_selectors("guard", 'rate(sessions_http_request_duration_seconds_bucket{route!~".+[?]watch"}[5m])')
    check_latency_selectors(
        "guard", 'rate(sessions_http_request_duration_seconds_bucket{route!~".+[?](watch|wait)"}[5m])'
    )


# --- the PrometheusRule --------------------------------------------------------------------------


def test_prometheusrule_holds_the_rule_file() -> None:
    resource = load_yaml(PROMETHEUSRULE)
    assert resource["spec"] == rule_file(), "run `make prometheusrule`"


def test_prometheusrule_script_finds_it_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(PROMETHEUSRULE_SCRIPT), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def prometheusrule_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prometheusrule", PROMETHEUSRULE_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prometheusrule_script_copies_a_change_and_keeps_the_metadata() -> None:
    script = prometheusrule_script()
    current = PROMETHEUSRULE.read_text(encoding="utf-8")
    changed = RULES.read_text(encoding="utf-8").replace("for: 15m", "for: 16m")
    rendered = script.render(changed, current)
    assert rendered != current
    resource = yaml.safe_load(rendered)
    assert resource["spec"] == yaml.safe_load(changed)
    assert resource["metadata"] == load_yaml(PROMETHEUSRULE)["metadata"]


def test_prometheusrule_has_the_operators_structure() -> None:
    resource = load_yaml(PROMETHEUSRULE)
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert set(resource) == {"apiVersion", "kind", "metadata", "spec"}
    check_metadata(resource["metadata"])
    jsonschema.validate(resource["spec"], PROMETHEUSRULE_SPEC_SCHEMA)
    names = [group["name"] for group in resource["spec"]["groups"]]
    assert len(names) == len(set(names)), "group names are the list's map key"


def test_prometheusrule_schema_rejects_a_misspelt_field() -> None:
    """Guard for the test above: strict, as the API server is not."""
    spec = load_yaml(PROMETHEUSRULE)["spec"]
    spec["groups"][0]["rules"][-1]["annotation"] = spec["groups"][0]["rules"][-1].pop("annotations")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(spec, PROMETHEUSRULE_SPEC_SCHEMA)


def check_metadata(metadata: dict[str, Any]) -> None:
    assert set(metadata) <= {"name", "namespace", "labels", "annotations"}, sorted(metadata)
    assert DNS_SUBDOMAIN.fullmatch(metadata["name"]) and len(metadata["name"]) <= 253
    for key, value in metadata.get("labels", {}).items():
        assert isinstance(key, str) and isinstance(value, str), (key, value)
        assert re.fullmatch(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?", value), value


# --- the PodMonitor, and how both are applied ----------------------------------------------------


def test_podmonitor_scrapes_the_service_pods() -> None:
    resource = load_yaml(PODMONITOR)
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PodMonitor"
    check_metadata(resource["metadata"])
    deployment = load_yaml(REPO / "deploy" / "kubernetes" / "deployment.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert set(resource["spec"]) == {"selector", "podMetricsEndpoints"}
    assert resource["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ports = {
        port["name"]
        for container in deployment["spec"]["template"]["spec"]["containers"]
        for port in container["ports"]
    }
    for endpoint in resource["spec"]["podMetricsEndpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}, sorted(endpoint)
        assert endpoint["port"] in ports
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(DURATION, endpoint["interval"]) and re.fullmatch(DURATION, endpoint["scrapeTimeout"])


def test_monitoring_objects_are_applied_on_their_own() -> None:
    monitoring = load_yaml(MONITORING / "kustomization.yaml")
    assert monitoring["kind"] == "Kustomization"
    listed = sorted(monitoring["resources"])
    assert listed == sorted(p.name for p in MONITORING.glob("*.yaml") if p.name != "kustomization.yaml")
    # Custom resources would fail `kubectl apply -k deploy/kubernetes` on a cluster without the
    # Operator's CRDs: the main kustomization leaves them out on purpose.
    main = load_yaml(REPO / "deploy" / "kubernetes" / "kustomization.yaml")
    assert not any("monitoring" in entry for entry in main["resources"])
