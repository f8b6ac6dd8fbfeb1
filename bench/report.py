"""Figures with their goals: medians, percentiles, the table, and the JSON results file."""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    goal: str  # e.g. ">= 0.9"
    details: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def passed(self) -> bool:
        op, threshold = self.goal.split()
        if math.isnan(self.value) or self.details.get("errors"):
            return False
        return self.value >= float(threshold) if op == ">=" else self.value <= float(threshold)

    def row(self) -> tuple[str, str, str, str]:
        value = f"{self.value:.3g}" if abs(self.value) < 100 else f"{self.value:,.0f}"
        goal_op = {">=": "at least", "<=": "at most"}[self.goal.split()[0]]
        return self.name, f"{value} {self.unit}".strip(), f"{goal_op} {self.goal.split()[1]} {self.unit}".strip(),\
            "PASS" if self.passed else "FAIL"  # fmt: skip


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in 0..100."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def table(figures: list[Figure]) -> str:
    rows = [("figure", "measured", "goal", "result"), *(figure.row() for figure in figures)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    notes = [f"- {figure.name}: {figure.note}" for figure in figures if figure.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def write(figures: list[Figure], config: dict[str, Any], raw: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = RESULTS / f"{stamp}.json"
    document = {
        "timestamp": stamp,
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": _cpus()},
        "config": config,
        "figures": [{**asdict(figure), "passed": figure.passed} for figure in figures],
        "raw": raw,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def _cpus() -> int:
    import os

    return os.cpu_count() or 0
