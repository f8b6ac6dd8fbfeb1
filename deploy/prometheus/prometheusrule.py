"""Copy the rule groups of alerts.yaml into ../kubernetes/monitoring/prometheusrule.yaml, as the
spec of a PrometheusRule (the Prometheus Operator's form of a rule file), so the two never drift.

    python deploy/prometheus/prometheusrule.py          # rewrite it (make prometheusrule)
    python deploy/prometheus/prometheusrule.py --check  # exit 1 if it is out of date

Everything in the target above its `spec:` line (apiVersion, metadata and the labels that the
Operator selects rules by) is kept as it is; everything below is replaced by the rule file's
text from `groups:` on, comments included, indented under `spec:`. Standard library only.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RULES = HERE / "alerts.yaml"
TARGET = HERE.parent / "kubernetes" / "monitoring" / "prometheusrule.yaml"
SPEC_LINE = "spec:\n"


def render(rules: str, current: str) -> str:
    head, found, _ = current.partition("\n" + SPEC_LINE)
    if not found:
        raise SystemExit(f"{TARGET}: no top-level `spec:` line to put the rules under")
    lines = rules.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.startswith("groups:")), None)
    if start is None:
        raise SystemExit(f"{RULES}: no top-level `groups:`")
    body = "".join("  " + line if line.strip() else line for line in lines[start:])
    return head + "\n" + SPEC_LINE + body


def main(argv: list[str]) -> int:
    current = TARGET.read_text(encoding="utf-8")
    wanted = render(RULES.read_text(encoding="utf-8"), current)
    if argv[1:] == ["--check"]:
        if wanted != current:
            print(f"{TARGET} differs from {RULES}: run `make prometheusrule`", file=sys.stderr)
            return 1
        return 0
    if argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    if wanted != current:
        TARGET.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
