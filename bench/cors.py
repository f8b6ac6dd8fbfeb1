"""`python -m bench.cors [--rounds N] [--seconds S]`: GET by id with CORS off and on, same run.

Two services over the same 20,000 sessions, side by side: one with the defaults (CORS off), one
with SESSIONS_CORS_ORIGINS set. Alternating rounds of wrk (random ids, 32 connections) measure
the first, the second with requests that carry no Origin (a service caller), and the second
with an allowed Origin (a page on another origin: every response gets the CORS headers), and
the first with that Origin too (what the request's extra header costs by itself).
Prints each configuration's median req/s and its ratio to CORS off.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench import wrk
from bench.generate import generate
from bench.server import pin_client, service

SESSIONS = 20_000
ORIGIN = "http://page.example"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    options = parser.parse_args()
    if not wrk.available():
        raise SystemExit(wrk.INSTALL_HINT)
    pin_client()
    with tempfile.TemporaryDirectory(prefix="bench-cors-") as temporary:
        root = Path(temporary)
        folder, logs = root / "sessions", root / "logs"
        folder.mkdir()
        logs.mkdir()
        ids = generate(folder, SESSIONS)
        paths = wrk.write_paths(root / "paths.txt", [f"/api/v2/jobs/{job_id}" for job_id in ids])
        off = service(folder, logs, "cors-off")
        on = service(folder, logs, "cors-on", SESSIONS_CORS_ORIGINS=ORIGIN)
        origin = (f"Origin: {ORIGIN}",)
        runs = {
            "off": (off, ()),
            "off, with Origin": (off, origin),  # what the request's extra header costs alone
            "on, no Origin": (on, ()),
            "on, allowed Origin": (on, origin),
        }
        rates: dict[str, list[float]] = {name: [] for name in runs}
        with off, on:
            off.wait_ready()
            on.wait_ready()
            names = list(runs)
            for round_ in range(options.rounds):
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    server, headers = runs[name]
                    result = wrk.run(server.base_url, paths, options.seconds, server_pid=server.pid, headers=headers)
                    if result.errors:
                        raise SystemExit(f"{name}: {result.errors} errors")
                    rates[name].append(result.rps)
                    print(f"round {round_ + 1} {name:20} {result.rps:9.0f} req/s  core_other {result.core_other:.2f}")
    reference = statistics.median(rates["off"])
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:20} median {median:9.0f} req/s  {median / reference:.3f}x of CORS off")


if __name__ == "__main__":
    main()
