"""File writers as they behave in the wild: temp file + rename, or in place (truncate, write).

`python -m bench.writer DIR --seconds S --rate R` churns every session file of DIR, round
after round, at R writes per second (a separate process, so that it does not share a GIL with
the probe that measures the server meanwhile)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import orjson

MARKER = "bench_marker"


def rewrite(path: Path, marker: str, in_place: bool) -> None:
    document = orjson.loads(path.read_bytes())
    document[MARKER] = marker
    body = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
    if in_place:
        with path.open("wb") as file:
            file.write(body)
        return
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_bytes(body)
    os.replace(temp, path)


def churn(folder: Path, seconds: float, rate: float) -> int:
    paths = sorted(folder.glob("*.json"))
    deadline = time.perf_counter() + seconds
    next_at = time.perf_counter()
    writes = 0
    while time.perf_counter() < deadline:
        path = paths[writes % len(paths)]
        rewrite(path, f"churn-{writes}", in_place=writes % 2 == 1)
        writes += 1
        next_at += 1.0 / rate
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return writes


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.writer")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, default=1000.0, help="writes per second")
    options = parser.parse_args()
    print(churn(options.folder, options.seconds, options.rate))


if __name__ == "__main__":
    main()
