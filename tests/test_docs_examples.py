"""Every shell and Python example of the docs runs against a real server, so the docs cannot drift
from the service. The examples are read from the Markdown at test time: fenced blocks tagged `sh`
(or `bash`) and `python` in README.md, client/README.md and docs/*.md. A block preceded by an
HTML comment `<!-- not run: why -->` is left out (it needs a cluster or Kubernetes, or runs until
stopped); blocks of other tags (`json`, `text`, `js`) are output or other languages. The pages
the site includes from deploy/ and bench/ are operations on a cluster and benchmark runs: not run.

One server (`python -m app`) for the module, over a copy of data/sessions/; each example runs in
a folder that holds that copy as `data/sessions/`, so examples that write a session file change
what the server serves. `localhost:8000` and `127.0.0.1:8000` are rewritten to its port.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import REPO, Server, start_server

RUN = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python", "py": "python"}
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<tag>[\w+-]*)[^`]*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run\b.*-->\s*$")
ADDRESS = re.compile(r"\b(?:localhost|127\.0\.0\.1):8000\b")
TIMEOUT_S = 60


@dataclass(frozen=True)
class Example:
    page: str
    line: int
    kind: str  # "sh" or "python"
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    return [REPO / "README.md", REPO / "client" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def examples_in(page: Path, root: Path = REPO) -> list[Example]:
    found: list[Example] = []
    lines = page.read_text().splitlines()
    index = 0
    previous = ""  # the last non-blank line before a fence
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            if lines[index].strip():
                previous = lines[index]
            index += 1
            continue
        indent, fence, tag = opening["indent"], opening["fence"], opening["tag"]
        start = index + 1
        end = start
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        body = "\n".join(line.removeprefix(indent) for line in lines[start:end]) + "\n"
        if tag in RUN and not NOT_RUN.match(previous):
            found.append(Example(str(page.relative_to(root)), start, RUN[tag], body))
        previous = lines[end] if end < len(lines) else ""
        index = end + 1
    return found


EXAMPLES = [example for page in pages() for example in examples_in(page)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    work = tmp_path_factory.mktemp("docs-examples")
    sessions = work / "data" / "sessions"
    shutil.copytree(REPO / "data" / "sessions", sessions)
    logs = tmp_path_factory.mktemp("docs-examples-logs")
    started = start_server(sessions, logs)
    yield started, work
    started.stop()


def test_the_docs_have_examples_to_run() -> None:
    # Guards the extraction itself: a parser that found nothing would pass every page.
    kinds = {example.kind for example in EXAMPLES}
    assert kinds == {"sh", "python"}, kinds
    assert len(EXAMPLES) >= 20, [example.id for example in EXAMPLES]
    assert any(example.page == "README.md" for example in EXAMPLES)
    assert any(example.page == "client/README.md" and example.kind == "python" for example in EXAMPLES)


def test_a_not_run_comment_leaves_its_block_out(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n```sh\necho one\n```\n\n<!-- not run: needs Kubernetes -->\n```sh\nkubectl get pods\n```\n\n"
        "```json\n{}\n```\n\n- a list item\n\n  ```python\n  print('two')\n  ```\n"
    )
    examples = [(example.kind, example.code) for example in examples_in(page, root=tmp_path)]
    assert examples == [("sh", "echo one\n"), ("python", "print('two')\n")]


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.id for example in EXAMPLES])
def test_the_example_runs_against_a_real_server(example: Example, server: tuple[Server, Path]) -> None:
    running, work = server
    port = running.base_url.rsplit(":", 1)[1]
    code = ADDRESS.sub(f"127.0.0.1:{port}", example.code)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SESSIONS_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = ["bash", "-euo", "pipefail", "-c", code] if example.kind == "sh" else [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    report = f"{example.id} exited {done.returncode}\n--- code\n{code}"
    report += f"--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
    assert done.returncode == 0, report
    assert "Traceback" not in done.stderr, report


def test_every_metric_the_server_exposes_is_in_the_operations_table(server: tuple[Server, Path]) -> None:
    # Not an example, but the same drift on the same server: a metric added without its row.
    from tests.support.ops import scrape

    running, _ = server
    families = scrape(running).families
    exposed = {name for name in families if not name.startswith("process_") and not name.endswith("_created")}
    rows = [line for line in (REPO / "docs" / "operations.md").read_text().splitlines() if line.startswith("| `")]
    documented = {
        re.sub(r"_(total|bucket|sum|count)$", "", name.split("{")[0])
        for row in rows
        for name in re.findall(r"`(sessions_[a-z_]+(?:\{[^}]*\})?)`", row.split("|")[1])
    }
    assert "sessions_build_info" in exposed
    assert exposed - documented == set(), "metrics missing from docs/operations.md"
