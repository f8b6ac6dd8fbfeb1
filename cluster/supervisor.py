"""A cluster on one machine: N replicas of the service over one folder, HAProxy in front.

    with Cluster(folder, work_dir, replicas=3) as cluster:
        httpx.get(cluster.url + "/api/v2/jobs")

`make cluster` runs one over the demo folder (`python -m cluster`); the tests and benchmarks
run theirs over temporary folders.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from cluster import haproxy
from cluster.process import ClusterError
from cluster.replica import HOST, Replica, free_port


class Cluster:
    def __init__(
        self,
        sessions_dir: Path,
        work_dir: Path,
        replicas: int = 3,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        stats_port: int | None = None,
        prefix: tuple[str, ...] = (),
        haproxy_prefix: tuple[str, ...] = (),
        configuration: str | None = None,
    ) -> None:
        """`env`: the replicas' settings (SESSIONS_*); `prefix`/`haproxy_prefix`: a command
        to run each under (e.g. `taskset -c 0`); `configuration`: HAProxy's, instead of the
        reference rendered for these replicas (a benchmark's variant)."""
        self.configuration = configuration
        self.work_dir = work_dir
        self.log_dir = work_dir / "logs"
        self.replicas = [
            Replica(f"replica{i}", sessions_dir, self.log_dir, env, prefix) for i in range(1, replicas + 1)
        ]
        self.config_path = work_dir / "haproxy.cfg"
        self.balancer = haproxy.Balancer(
            self.config_path,
            f"{HOST}:{port or free_port()}",
            f"{HOST}:{stats_port or free_port()}",
            [replica.address for replica in self.replicas],
            self.log_dir,
            haproxy_prefix,
        )

    @property
    def url(self) -> str:
        return self.balancer.url

    def replica(self, name: str) -> Replica:
        for replica in self.replicas:
            if replica.name == name:
                return replica
        raise KeyError(name)

    def start(self, replicas: Iterable[str] | None = None, timeout: float = 120.0) -> None:
        """Start the replicas (all, or those named), wait until they are ready, then HAProxy,
        and wait until it routes to them. Replicas not started are DOWN in HAProxy until they
        start and turn ready."""
        if haproxy.binary() is None:
            raise ClusterError(haproxy.INSTALL_HINT)
        wanted = [self.replica(name) for name in replicas] if replicas is not None else self.replicas
        self.work_dir.mkdir(parents=True, exist_ok=True)
        configuration = self.configuration or haproxy.render(len(self.replicas))
        self.config_path.write_text(configuration, encoding="utf-8")
        try:
            for replica in wanted:
                replica.start()
            for replica in wanted:
                replica.wait_ready(timeout)
            self.balancer.start()
            self.wait_routed([replica.name for replica in wanted], timeout=timeout)
            # HAProxy starts with every server UP until its checks fail (`UP 1/2`): wait for
            # those not started to be out of rotation, so that the cluster is settled.
            others = [replica.name for replica in self.replicas if replica not in wanted]
            self.wait_routed(others, up=False, timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def wait_routed(self, names: Iterable[str], up: bool = True, timeout: float = 30.0) -> None:
        """Wait until HAProxy has these replicas in rotation (`UP`), or out of it."""
        self.balancer.wait_routed(names, up, timeout)

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM everything at once (the replicas drain in parallel); SIGKILL what is left
        after `timeout`. Returns each process's exit status."""
        children = [self.balancer, *self.replicas]
        for child in children:
            child.send(child.stop_signal)
        return {child.name: child.finish(timeout) for child in children}

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
