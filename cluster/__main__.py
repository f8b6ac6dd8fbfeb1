"""`python -m cluster` (`make cluster`): N replicas over one sessions folder, HAProxy in front,
until Ctrl-C or SIGTERM stops them all.

Settings from the environment: CLUSTER_REPLICAS (3), CLUSTER_PORT (8080, HAProxy's), CLUSTER_DIR
(`.cluster`: the rendered configuration and the logs), and the replicas' own SESSIONS_*
variables (SESSIONS_DIR defaults to the demo folder, data/sessions).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from cluster import haproxy
from cluster.process import ROOT, ClusterError
from cluster.supervisor import Cluster

# A draining replica keeps serving this long, so that HAProxy's checks (every 1 s, down after
# 2 failures 0.5 s apart) stop routing to it first: see deploy/README.md.
SHUTDOWN_DELAY_S = "3"


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=int(environ.get("CLUSTER_REPLICAS", "3") or 3))
    parser.add_argument("--port", type=int, default=int(environ.get("CLUSTER_PORT", "8080") or 8080))
    parser.add_argument("--dir", type=Path, default=Path(environ.get("CLUSTER_DIR", "") or ROOT / ".cluster"))
    return parser


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _banner(cluster: Cluster, sessions_dir: Path) -> str:
    lines = [
        f"{len(cluster.replicas)} replicas of `python -m app` over {_shown(sessions_dir)}, HAProxy in front",
        "",
        f"  use        {cluster.url}",
        f"  haproxy    stats {cluster.balancer.stats_url} (Prometheus: /metrics), pid {cluster.balancer.pid}, "
        f"log {_shown(cluster.balancer.log_path)}, configuration {_shown(cluster.config_path)}",
    ]
    for replica in cluster.replicas:
        lines.append(f"  {replica.name:<10} {replica.url}, pid {replica.pid}, log {_shown(replica.log_path)}")
    lines += ["", "Ctrl-C (or SIGTERM) stops them all."]
    return "\n".join(lines)


def _watch(cluster: Cluster) -> int:
    """Until a signal: report a replica that exits (HAProxy routes around it); stop when
    HAProxy exits, since nothing is served then."""
    reported: set[str] = set()
    while True:
        time.sleep(0.5)
        if not cluster.balancer.running():
            print(f"haproxy exited unexpectedly:\n{cluster.balancer.log_tail()}", file=sys.stderr)
            return 1
        for replica in cluster.replicas:
            if replica.name not in reported and not replica.running():
                reported.add(replica.name)
                where = _shown(replica.log_path)
                print(f"{replica.name} exited with status {replica.returncode}; HAProxy routes around it (log {where})",
                      file=sys.stderr, flush=True)  # fmt: skip


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    try:
        options = _parser(environ).parse_args(argv)
    except ValueError as exc:  # CLUSTER_REPLICAS or CLUSTER_PORT that is not a number
        print(f"python -m cluster: {exc}", file=sys.stderr)
        return 2
    if options.replicas < 1 or not 0 < options.port < 65536:
        print("python -m cluster: needs at least one replica and a port from 1 to 65535", file=sys.stderr)
        return 2
    if haproxy.binary() is None:
        print(haproxy.INSTALL_HINT, file=sys.stderr)
        return 1
    settings = {key: value for key, value in environ.items() if key.startswith("SESSIONS_")}
    settings.setdefault("SESSIONS_SHUTDOWN_DELAY_S", SHUTDOWN_DELAY_S)
    # Relative to where it was run from; the replicas run from the repository.
    sessions_dir = Path(settings.get("SESSIONS_DIR") or ROOT / "data" / "sessions").resolve()
    settings["SESSIONS_DIR"] = str(sessions_dir)
    cluster = Cluster(sessions_dir, options.dir, options.replicas, settings, port=options.port)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_stopped)
    status = 0
    try:
        cluster.start()
        print(_banner(cluster, sessions_dir), flush=True)
        status = _watch(cluster)
    except _Stopped as stopped:
        print(f"\n{stopped}: stopping the replicas and HAProxy", flush=True)
    except ClusterError as exc:
        print(f"python -m cluster: {exc}", file=sys.stderr)
        status = 1
    finally:
        # A second Ctrl-C while they drain skips the replicas' shutdown delay (SIGTERM again).
        def hurry(signum: int, frame: FrameType | None) -> None:
            for child in cluster.replicas:
                child.send(signal.SIGTERM)

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, hurry)
        codes = cluster.stop()
    unclean = {name: code for name, code in codes.items() if code not in (0, None)}
    if unclean and status == 0:
        print(f"exit statuses: {unclean}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
