"""wrk, pinned to the client core, driven by bench/lua/paths.lua; its JSON summary parsed."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.server import CLIENT_CORE, SERVER_CORE

SCRIPT = Path(__file__).resolve().parent / "lua" / "paths.lua"
INSTALL_HINT = "wrk is missing: install it with `sudo apt-get update && sudo apt-get install -y wrk` (Debian/Ubuntu)"


class WrkError(Exception):
    pass


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    client_cpu: float  # wrk's CPU time / wall time: near 1.0 would mean wrk is the bottleneck
    server_cpu: float  # the server's CPU time / wall time
    core_other: float  # the rest of the server core's busy time / wall time: others' noise

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def available() -> bool:
    return shutil.which("wrk") is not None and shutil.which("taskset") is not None


def write_paths(path: Path, paths: list[str]) -> Path:
    path.write_text("\n".join(paths) + "\n")
    return path


def core_busy_s(core: int) -> float:
    """Busy seconds of one core since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith(f"cpu{core} "):
                ticks = [int(x) for x in line.split()[1:]]
                return (sum(ticks) - ticks[3] - ticks[4]) / _TICKS
    return 0.0


def process_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


_TICKS = os.sysconf("SC_CLK_TCK")


def run(
    base_url: str,
    paths_file: Path,
    seconds: float,
    connections: int = 32,
    seed: int = 1,
    timeout_s: float = 5.0,
    server_pid: int | None = None,
    headers: tuple[str, ...] = (),
) -> WrkResult:
    argv = [
        "taskset", "-c", str(CLIENT_CORE), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s:g}s", "-s", str(SCRIPT), *(f"-H{header}" for header in headers), base_url,
    ]  # fmt: skip
    env = {**os.environ, "BENCH_PATHS": str(paths_file), "BENCH_SEED": str(seed)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    core_before, server_before = core_busy_s(SERVER_CORE), process_cpu_s(server_pid) if server_pid else 0.0
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish: {exc}") from exc
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    core_used = core_busy_s(SERVER_CORE) - core_before
    server_used = (process_cpu_s(server_pid) - server_before) if server_pid else 0.0
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise WrkError(f"wrk failed ({done.returncode}): {done.stdout[-800:]} {done.stderr[-800:]}")
    data = json.loads(lines[-1])
    latency, errors = data["latency_us"], data["errors"]
    wall = data["duration_us"] / 1e6
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return WrkResult(
        requests=data["requests"],
        seconds=wall,
        errors=sum(errors.values()),
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        client_cpu=cpu / wall if wall else 0.0,
        server_cpu=server_used / wall if wall else 0.0,
        core_other=max(0.0, core_used - server_used) / wall if wall and server_pid else 0.0,
    )
