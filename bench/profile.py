"""`python -m bench.profile [--target get|list] [--seconds S] [--sessions N]`: py-spy records
the service while wrk loads it; writes a flame graph (SVG) or speedscope file to bench/results/.

The same by hand, against a running server:
    py-spy record --pid <server pid> --rate 250 --duration 20 --idle --threads -o profile.svg
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import server, throughput, wrk
from bench.generate import generate
from bench.report import RESULTS


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--target", choices=("get", "list"), default="get")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--format", choices=("flamegraph", "speedscope"), default="flamegraph")
    options = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists() or not wrk.available():
        print(f"needs py-spy (pip install py-spy) and wrk. {wrk.INSTALL_HINT}", file=sys.stderr)
        return 1
    server.pin_client()
    RESULTS.mkdir(exist_ok=True)
    suffix = "svg" if options.format == "flamegraph" else "json"
    output = RESULTS / f"profile-{options.target}-{time.strftime('%Y%m%dT%H%M%S')}.{suffix}"
    with tempfile.TemporaryDirectory(prefix="sessions-profile-") as tmp:
        work = Path(tmp)
        ids = generate(work / "sessions", options.sessions)
        with server.service(work / "sessions", work) as srv:
            srv.wait_ready(deadline_s=600)
            paths = throughput.id_paths(ids) if options.target == "get" else throughput.list_paths(srv.port)
            paths_file = wrk.write_paths(work / "paths.txt", paths)
            record = subprocess.Popen([py_spy, "record", "--pid", str(srv.pid), "--rate", "250", "--idle",
                                       "--duration", str(options.seconds), "--format", options.format,
                                       "-o", str(output)])  # fmt: skip
            result = wrk.run(srv.base_url, paths_file, options.seconds)
            record.wait(timeout=options.seconds + 60)
    print(f"{result.rps:,.0f} req/s, p99 {result.p99_ms:.2f} ms under the profiler (sampling slows it)")
    print(f"profile: {output}")
    return record.returncode


if __name__ == "__main__":
    sys.exit(main())
