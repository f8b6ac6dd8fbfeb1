"""`python -m bench.bare_warm DIR`: the warm-up reference, a bare loop that reads and parses
every session file once. Prints the number of documents parsed."""

from __future__ import annotations

import os
import sys

import orjson


def main(folder: str) -> int:
    parsed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(".json") and entry.is_file():
                with open(entry.path, "rb") as file:
                    orjson.loads(file.read())
                parsed += 1
    return parsed


if __name__ == "__main__":
    print(main(sys.argv[1]))
