"""Writes the client's sync code from its async code: each sessions_client/_async/X.py becomes
sessions_client/_sync/X.py. The async code is the one written by hand; the sync code is never
edited, only generated (httpcore keeps its two halves the same way).

    python client/scripts/unasync.py           # regenerate the sync code (make unasync)
    python client/scripts/unasync.py --check   # exit 1 if it is not what the async code makes

Each line of the async code goes through the markers, then RENAMES:
- a line ending in `# async only` is left out;
- a comment line `# sync: CODE` becomes CODE, at the comment's indentation (and is not renamed);
- RENAMES turn the async words into the sync ones, whole words only: `async def` into `def`,
  `await x` into `x`, `AsyncX` into `X`, `async_x` into `x`, `aclose` into `close`...
The primitives that `AsyncX` and `async_x` name (events, sleeps, how a watch stops, what runs
a mirror) are written by hand, both forms side by side, in sessions_client/concurrency.py.
Last, ruff sorts the imports and formats the code, so the result passes `make lint` as it is.
A rule that no line uses is an error: the code it was written for has gone."""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sessions_client"
SOURCE = PACKAGE / "_async"
TARGET = PACKAGE / "_sync"

RENAMES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(pattern), replacement)
    for pattern, replacement in [
        (r"\bsessions_client\._async\b", "sessions_client._sync"),
        (r"\bAsync([A-Z]\w*)", r"\1"),  # AsyncSessionsClient, AsyncIterator, httpx.AsyncClient, AsyncEvent...
        (r"\basync_(\w+)", r"\1"),  # async_sleep, async_wait_event...
        (r"\basync (def|with|for)\b", r"\1"),
        (r"\bawait ", ""),
        (r"\b__aenter__\b", "__enter__"),
        (r"\b__aexit__\b", "__exit__"),
        (r"\baclose\b", "close"),
        (r"\baread\b", "read"),
        (r"\baiter_bytes\b", "iter_bytes"),
    ]
]
ASYNC_ONLY = "# async only"
SYNC_LINE = re.compile(r"^(?P<indent>[ ]*)# sync: (?P<code>.*)$")


@dataclass
class Unasync:
    """The translation, counting the rules it used."""

    used: set[int] = field(default_factory=set)

    def line(self, line: str) -> str | None:
        if line.rstrip("\n").endswith(ASYNC_ONLY):
            return None
        if match := SYNC_LINE.match(line):
            return match["indent"] + match["code"] + "\n"
        for index, (pattern, replacement) in enumerate(RENAMES):
            line, count = pattern.subn(replacement, line)
            if count:
                self.used.add(index)
        return line

    def text(self, source: str) -> str:
        lines = (self.line(line) for line in source.splitlines(keepends=True))
        return "".join(line for line in lines if line is not None)

    def unused(self) -> list[str]:
        return [RENAMES[index][0].pattern for index in range(len(RENAMES)) if index not in self.used]


def header(source: Path) -> str:
    name = source.relative_to(PACKAGE.parent).as_posix()
    return (
        f"# Generated from {name} by client/scripts/unasync.py: edit that file, then run\n"
        "# `make unasync`. tests/test_client_unasync.py fails while this file differs from what it makes.\n"
    )


def ruff(arguments: list[str], path: Path, text: str) -> str:
    """`text` through ruff, configured as for a file at `path` (client/pyproject.toml)."""
    command = [sys.executable, "-m", "ruff", *arguments, "--quiet", "--stdin-filename", str(path), "-"]
    done = subprocess.run(command, input=text, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed on the sync code of {path.name}:\n{done.stderr}{done.stdout}")
    return done.stdout


def generate(source: Path, unasync: Unasync) -> str:
    """The sync code that `source`, a module of the async code, makes."""
    target = TARGET / source.name
    text = header(source) + unasync.text(source.read_text())
    text = ruff(["check", "--select", "I", "--fix"], target, text)
    return ruff(["format"], target, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if the sync code is stale")
    check = parser.parse_args(argv).check
    unasync = Unasync()
    sources = sorted(SOURCE.glob("*.py"))
    wanted = {TARGET / source.name: generate(source, unasync) for source in sources}
    problems = [f"RENAMES has a rule no line uses: {pattern!r}" for pattern in unasync.unused()]
    stale = [path for path in sorted(TARGET.glob("*.py")) if path not in wanted]
    for path in stale:
        if check:
            problems.append(f"{path.name} in the sync code has no async source")
        else:
            path.unlink()
            print(f"removed {path}")
    for path, text in wanted.items():
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        if check:
            diff = difflib.unified_diff(
                current.splitlines(keepends=True), text.splitlines(keepends=True), str(path), "generated"
            )
            problems.append(f"{path} is not what the async code makes (run `make unasync`):\n{''.join(diff)}")
        else:
            TARGET.mkdir(exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
