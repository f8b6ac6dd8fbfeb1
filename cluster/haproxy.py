"""HAProxy: the reference configuration rendered for N replicas, checked, and run.

`deploy/haproxy/haproxy.cfg` is the one source: it names three replicas through environment
variables (`"${REPLICA_1-...}"`), which HAProxy itself expands. For N replicas, `render` repeats
the first `server replica1 ...` line of each backend N times, with its number changed and no
default address; nothing else of the file changes.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

from cluster.process import Child, ClusterError, Timeout, environment, wait_for

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy" / "haproxy.cfg"
INSTALL_HINT = (
    "haproxy is missing: install it with `sudo apt-get update && sudo apt-get install -y haproxy` "
    "(Debian/Ubuntu; HAProxy 2.6 or later), then run this again"
)
BACKENDS = ("by_job", "watches", "spread")
_SERVER = re.compile(r"^(\s*)server replica(\d+)\b.*$")
_VARIABLE = re.compile(r'"\$\{REPLICA_1(?:-[^}]*)?\}"')


def binary() -> str | None:
    return shutil.which("haproxy")


def render(replicas: int, source: str | None = None) -> str:
    """The reference configuration with `replicas` server lines in each backend."""
    if replicas < 1:
        raise ValueError(f"a cluster needs at least one replica, got {replicas}")
    text = CONFIG.read_text(encoding="utf-8") if source is None else source
    out: list[str] = []
    in_block = False
    for line in text.splitlines():
        match = _SERVER.match(line)
        if match is None:
            in_block = False
            out.append(line)
            continue
        if in_block:
            continue  # the block's other lines are rebuilt from its first
        in_block = True
        if match[2] != "1":
            raise ValueError(f"a backend's server lines must start with replica1: {line.strip()}")
        if not _VARIABLE.search(line):
            raise ValueError(f'server replica1 must take its address from "${{REPLICA_1}}": {line.strip()}')
        for i in range(1, replicas + 1):
            numbered = _VARIABLE.sub(f'"${{REPLICA_{i}}}"', line)
            out.append(re.sub(r"\breplica1\b", f"replica{i}", numbered))
    return "\n".join(out) + "\n"


def variables(bind: str, stats_bind: str, replicas: list[str]) -> dict[str, str]:
    """The environment the configuration reads: where to listen, and each replica's address."""
    env = {"LB_BIND": bind, "LB_STATS_BIND": stats_bind}
    env.update({f"REPLICA_{i}": address for i, address in enumerate(replicas, start=1)})
    return env


def check(config: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`haproxy -c -f config`: exit status 0 when valid; warnings on its output."""
    return subprocess.run(
        [binary() or "haproxy", "-c", "-f", str(config)],
        env=environment(("LB_", "REPLICA_"), dict(env or {})),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


class Balancer(Child):
    """HAProxy in the foreground (`-db`), its log on stdout (the `log stdout` of the config)."""

    # A soft stop: stop listening, finish the requests in flight (at most hard-stop-after),
    # exit 0. SIGTERM would cut them off.
    stop_signal = signal.SIGUSR1

    def __init__(
        self,
        config: Path,
        bind: str,
        stats_bind: str,
        replicas: list[str],
        log_dir: Path,
        prefix: tuple[str, ...] = (),
        name: str = "haproxy",
    ) -> None:
        env = environment(("LB_", "REPLICA_"), variables(bind, stats_bind, replicas))
        super().__init__(name, [*prefix, binary() or "haproxy", "-db", "-f", str(config)], env, log_dir)
        self.config = config
        self.bind = bind
        self.stats_bind = stats_bind

    @property
    def url(self) -> str:
        return f"http://{self.bind}"

    @property
    def stats_url(self) -> str:
        return f"http://{self.stats_bind}/stats"

    def stats(self) -> list[dict[str, str]]:
        """One row per frontend, backend and server: HAProxy's CSV statistics."""
        with urllib.request.urlopen(self.stats_url + ";csv", timeout=5) as response:
            text = response.read().decode()
        return list(csv.DictReader(io.StringIO(text.lstrip("# "))))

    def server_states(self, backend: str = "by_job") -> dict[str, str]:
        """`replica1` -> `UP`, `DOWN`, `UP 1/2` (going down), `DOWN 1/2` (going up), `MAINT`..."""
        return {
            row["svname"]: row["status"]
            for row in self.stats()
            if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_routed(self, names: Iterable[str], up: bool = True, timeout: float = 30.0) -> None:
        """Wait until these replicas are in rotation and healthy (`UP`), or out of rotation
        (`up=False`: DOWN, going up, in maintenance; `UP 1/2`, going down, still takes traffic)."""
        names = list(names)

        def settled() -> bool:
            if not self.running():
                raise ClusterError(f"{self.name} exited:\n{self.log_tail()}")
            try:
                states = self.server_states()
            except OSError:
                return False  # the stats listener is not up yet
            if up:
                return all(states.get(name) == "UP" for name in names)
            return all(not states.get(name, "UP").startswith("UP") for name in names)

        try:
            wait_for(settled, timeout, f"{self.name} to have {', '.join(names)} {'UP' if up else 'out of rotation'}")
        except Timeout as exc:
            raise Timeout(f"{exc}\n{self.log_tail()}") from None

    def server_counters(self, name: str) -> dict[str, int]:
        """Retries (`wretr`), redispatches (`wredis`), failed connections (`econ`) and failed
        responses (`eresp`) of one replica, summed over the backends."""
        totals = {"wretr": 0, "wredis": 0, "econ": 0, "eresp": 0}
        for row in self.stats():
            if row["pxname"] in BACKENDS and row["svname"] == name:
                for key in totals:
                    totals[key] += int(row[key] or 0)
        return totals
