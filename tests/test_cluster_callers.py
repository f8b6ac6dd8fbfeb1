"""The callers' library through the real HAProxy while replicas go away, under load: gets, list
pages, long polls, mirrors of the collection (whole and filtered) and job watches, all through
sessions_client (bench/callers.py), while a writer changes, deletes and restores sessions. A
rolling restart of every replica (SIGTERM, one at a time) and a replica killed (SIGKILL): no
caller sees a failure, and every copy ends equal to the folder."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench import probe
from bench.callers import Readers, Record, Truth, Watchers, Writer, agreed_truth, split_ids
from bench.generate import generate
from cluster import Cluster, Replica, haproxy
from tests.support import wait_until
from tests.support.cluster import CLUSTER_ENV

pytestmark = pytest.mark.slow  # several replicas behind a real HAProxy, restarted under load

# A draining replica keeps serving while HAProxy takes it out (1.5 s, test_haproxy_config);
# streams end every 2-4 s and bookmark every second, so that resumes happen within the test.
CALLERS_ENV = {
    **CLUSTER_ENV,
    "SESSIONS_SHUTDOWN_DELAY_S": "3",
    "SESSIONS_STREAM_TIMEOUT_S": "2",
    "SESSIONS_BOOKMARK_S": "1",
}


@dataclass
class Callers:
    cluster: Cluster
    folder: Path
    hot: list[str]
    record: Record
    writer: Writer
    readers: Readers
    watchers: Watchers

    def stop_load(self) -> None:
        # Readers first: a long poll in progress waits for the writer's next change.
        self.readers.stop()
        self.writer.stop()

    def settled(self, timeout: float = 90.0) -> Truth:
        """Wait until the replicas up agree with the folder and every copy equals them."""
        last: list[str] = []

        def equal() -> Truth | None:
            urls = [r.url for r in self.cluster.replicas if r.running()]
            truth = agreed_truth(urls, self.hot, self.folder)
            if truth is None:
                return None
            last[:] = self.watchers.differences(truth)
            return None if last else truth

        try:
            return wait_until(equal, timeout=timeout, interval=0.2, what="every copy equal to the folder")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {last}") from None


@pytest.fixture
def callers(tmp_path: Path) -> Iterator[Callable[[], Callers]]:
    if haproxy.binary() is None:
        pytest.fail(haproxy.INSTALL_HINT)
    made: list[Callers] = []

    def start() -> Callers:
        folder = tmp_path / "sessions"
        ids = generate(folder, 400, seed=12)
        hot, deletable, stable = split_ids(ids, 8, 4)
        cluster = Cluster(folder, tmp_path / "cluster", 3, CALLERS_ENV)
        cluster.start()
        record = Record()
        watchers = Watchers(cluster.url, hot, record, mirrors=2)
        writer = Writer(folder, hot, deletable, record, interval=0.05, max_seconds=300)
        readers = Readers(cluster.url, stable, hot, record, max_seconds=300)
        made.append(Callers(cluster, folder, hot, record, writer, readers, watchers))
        watchers.start()
        writer.start()
        readers.start()
        return made[-1]

    yield start
    for run in made:
        run.stop_load()
        run.watchers.stop()
        run.cluster.stop()


def busiest(cluster: Cluster) -> Replica | None:
    """The replica with the most collection streams open now; None if none has any."""
    counts = {r.name: probe.metric(r.port, 'sessions_streams_open{kind="collection"}') or 0.0 for r in cluster.replicas}
    name = max(counts, key=lambda n: counts[n])
    return cluster.replica(name) if counts[name] >= 1 else None


def served_some(record: Record, more: int, what: str) -> None:
    start = record.count()
    wait_until(lambda: record.count() >= start + more, timeout=60, what=what)


def test_a_rolling_restart_costs_the_callers_nothing(callers: Callable[[], Callers]) -> None:
    run = callers()
    # Streams end by their lifetime every 2-4 s and resume from their revision: hashed on the
    # watch's key, on the replica that knows it, so with no relist.
    wait_until(lambda: run.watchers.resumes() >= 12, timeout=60, what="streams to end and resume")
    assert run.watchers.relists() == 0, "a resume reached a replica that did not know its revision"
    served_some(run.record, 100, "load before the restarts")

    for replica in run.cluster.replicas:
        restarted_at = time.monotonic()
        assert replica.stop() == 0, replica.log_tail()  # SIGTERM: drains, exits 0
        replica.start()
        replica.wait_ready(60)
        run.cluster.wait_routed([replica.name], timeout=60)
        assert time.monotonic() - restarted_at < 60
        served_some(run.record, 50, f"load after {replica.name} came back")
    run.stop_load()
    run.settled()

    assert not run.record.failures(), run.record.failures()[:5]
    assert {kind: run.record.count(kind) > 0 for kind in ("get", "list", "wait")} == dict.fromkeys(
        ("get", "list", "wait"), True
    )
    assert run.writer.writes >= 50
    # Every replica's history ended once: each mirror listed again at least once.
    assert all(m.reflector is not None and m.reflector.relists >= 1 for m in run.watchers.mirrors)
    assert all(job.events > 0 for job in run.watchers.jobs)


def test_a_replica_killed_costs_the_callers_nothing(callers: Callable[[], Callers]) -> None:
    run = callers()
    served_some(run.record, 100, "load before the kill")
    # The replica with the most mirrors' streams: the watch keys are random, so any replica
    # may have none (a fifth of the time with four mirrors on three replicas).
    victim = wait_until(lambda: busiest(run.cluster), timeout=30, what="a replica serving a mirror")
    victim.kill()
    run.cluster.wait_routed([victim.name], up=False, timeout=30)
    served_some(run.record, 200, f"load while {victim.name} is gone")
    run.stop_load()
    # The streams it served resumed on the others (a 410 there, and a relist): equal again.
    run.settled()
    assert not run.record.failures(), run.record.failures()[:5]
    assert run.watchers.relists() >= 1
    victim.start()
    victim.wait_ready(60)
    run.cluster.wait_routed([victim.name], timeout=60)
    run.settled()
