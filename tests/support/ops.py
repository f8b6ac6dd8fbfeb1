"""Support for the operations tests: scraping /metrics with prometheus-client's own parser,
reading figures out of a scrape, and running `python -m app check`."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.support import REPO, Server, server_env, wait_until

T = TypeVar("T")

JOB_ROUTE = "/api/v2/jobs/{job_id}"
LIST_ROUTE = "/api/v2/jobs"
# prometheus-client's naming rules: https://prometheus.io/docs/instrumenting/writing_exporters/
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


@dataclass(frozen=True)
class Scrape:
    """One parsed /metrics response."""

    text: str
    families: dict[str, Metric]

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [
            (dict(sample.labels), sample.value)
            for family in self.families.values()
            for sample in family.samples
            if sample.name == name
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels (0 when absent, as a counter not yet touched)."""
        for sample_labels, sample_value in self.samples(name):
            if sample_labels == labels:
                return sample_value
        return 0.0

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample whose labels include these (e.g. all statuses of a route)."""
        return sum(value for sample_labels, value in self.samples(name) if labels.items() <= sample_labels.items())

    def label_values(self, label: str) -> set[str]:
        return {
            sample.labels[label]
            for family in self.families.values()
            for sample in family.samples
            if label in sample.labels
        }


def parse(text: str) -> Scrape:
    families = {family.name: family for family in text_string_to_metric_families(text)}
    return Scrape(text, families)


def scrape(server: Server) -> Scrape:
    response = server.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return parse(response.text)


def wait_for_scrape(
    server: Server, condition: Callable[[Scrape], bool], timeout: float = 10.0, what: str = "", interval: float = 0.05
) -> Scrape:
    """Scrape until `condition` holds for one scrape; fail with the last figures after `timeout`."""
    last: list[Scrape] = []

    def attempt() -> Scrape | None:
        current = scrape(server)
        last[:] = [current]
        return current if condition(current) else None

    try:
        return wait_until(attempt, timeout, interval, what)
    except AssertionError as exc:
        detail = last[0].text if last else "(no scrape)"
        raise AssertionError(f"{exc}\nlast scrape:\n{detail}") from None


def histogram_buckets(scrape_: Scrape, name: str, **labels: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) pairs of one histogram child, in bound order."""
    buckets = []
    for sample_labels, value in scrape_.samples(f"{name}_bucket"):
        le = sample_labels.pop("le")
        if sample_labels == labels:
            buckets.append((float(le), value))
    return sorted(buckets)


def assert_histogram_consistent(scrape_: Scrape, name: str, **labels: str) -> float:
    """Cumulative buckets never decrease, +Inf is the count, and the sum is not negative.
    Returns the count."""
    buckets = histogram_buckets(scrape_, name, **labels)
    assert buckets, f"no buckets for {name} {labels}"
    counts = [count for _, count in buckets]
    assert counts == sorted(counts), f"{name} {labels}: buckets are not cumulative: {buckets}"
    assert buckets[-1][0] == float("inf"), buckets
    count = scrape_.value(f"{name}_count", **labels)
    assert buckets[-1][1] == count, f"{name} {labels}: +Inf bucket {buckets[-1][1]} != count {count}"
    assert scrape_.value(f"{name}_sum", **labels) >= 0
    return count


def run_check(folder: Path | str | None, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m app check [folder]` with a clean environment (SESSIONS_DIR only if `env` sets it)."""
    environment = server_env(Path("."), env)
    environment.pop("SESSIONS_DIR", None)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "app", "check", *([] if folder is None else [str(folder)])],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
