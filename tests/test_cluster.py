"""Several replicas behind the real HAProxy, with the reference configuration (cluster/, the
same code as `make cluster`), over real temporary folders: routing by job id, readiness,
failover, and `python -m cluster` itself."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.generate import generate
from cluster import Cluster, haproxy
from tests.support import REPO, free_port, put_session, wait_until
from tests.support.cluster import CLUSTER_ENV, Load, json_logs, served_by, share

pytestmark = pytest.mark.slow  # several replicas behind a real HAProxy


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Build a cluster over a folder (started by the test, as it needs); every one is stopped
    in teardown."""
    if haproxy.binary() is None:
        pytest.fail(haproxy.INSTALL_HINT)
    made: list[Cluster] = []

    def build(folder: Path, replicas: int = 3, env: dict[str, str] | None = None) -> Cluster:
        cluster = Cluster(folder, tmp_path / f"cluster-{len(made)}", replicas, {**CLUSTER_ENV, **(env or {})})
        made.append(cluster)
        return cluster

    yield build
    for cluster in made:
        cluster.stop()


def small_folder(folder: Path, count: int) -> list[str]:
    folder.mkdir()
    ids = [f"job-{i:04d}" for i in range(count)]
    for i, job_id in enumerate(ids):
        put_session(folder, job_id, updated_at=f"2024-05-01T12:{i // 60 % 60:02d}:{i % 60:02d}Z")
    return ids


def test_each_job_is_answered_by_one_replica_and_lists_spread(
    tmp_path: Path, make_cluster: Callable[..., Cluster]
) -> None:
    ids = small_folder(tmp_path / "sessions", 300)
    cluster = make_cluster(tmp_path / "sessions")
    cluster.start()
    with httpx.Client(base_url=cluster.url, timeout=30) as client:
        owners = share(cluster, ids, client)
        # The same job, however asked: a query string, HEAD, a conditional GET, a second time.
        for job_id in ids:
            etag = client.get(f"/api/v2/jobs/{job_id}").headers["etag"]
            answers = [
                client.get(f"/api/v2/jobs/{job_id}?watch=false"),
                client.get(f"/api/v2/jobs/{job_id}?a=1&b=2"),
                client.head(f"/api/v2/jobs/{job_id}"),
                client.get(f"/api/v2/jobs/{job_id}", headers={"If-None-Match": etag}),
            ]
            assert [a.status_code for a in answers] == [200, 200, 200, 304]
            assert {served_by(a) for a in answers} == {owners[job_id]}, job_id
        # Every replica holds a share of the folder (consistent hashing is never exactly even).
        counts = collections.Counter(owners.values())
        assert set(counts) == {"replica1", "replica2", "replica3"}
        assert min(counts.values()) >= 0.15 * len(ids), counts

        lists = collections.Counter(
            served_by(client.get(path)) for _ in range(15) for path in ("/api/v2/jobs?limit=10", "/api/v2/jobs/")
        )
        assert set(lists) == {"replica1", "replica2", "replica3"} and min(lists.values()) >= 5, lists

        # X-Served-By tells the truth: the replica it names logged the request (by its id).
        for i, job_id in enumerate(ids[:30]):
            response = client.get(f"/api/v2/jobs/{job_id}", headers={"X-Request-ID": f"routing-{i}"})
            named = cluster.replica(response.headers["x-served-by"])
            wait_until(
                lambda i=i, named=named: any(e.get("request_id") == f"routing-{i}" for e in json_logs(named)),
                what=f"routing-{i} in {named.name}'s access log",
            )
        # HAProxy gives a request without an id one, which the replica logs as its own.
        response = client.get(f"/api/v2/jobs/{ids[0]}")
        request_id = response.headers["x-request-id"]
        named = cluster.replica(response.headers["x-served-by"])
        wait_until(lambda: any(e.get("request_id") == request_id for e in json_logs(named)), what="the id HAProxy set")
    # A clean stop: HAProxy's soft stop and every replica's drain end in exit status 0.
    assert cluster.stop() == {"haproxy": 0, "replica1": 0, "replica2": 0, "replica3": 0}


@pytest.mark.slow
def test_a_warming_replica_gets_no_traffic_until_ready(tmp_path: Path, make_cluster: Callable[..., Cluster]) -> None:
    folder = tmp_path / "sessions"
    ids = generate(folder, 50_000, seed=10)
    cluster = make_cluster(folder)
    cluster.start(replicas=["replica1", "replica2"], timeout=300)
    late = cluster.replica("replica3")
    assert cluster.balancer.server_states()["replica3"].startswith("DOWN")

    with Load(cluster.url, ids, threads=2, list_share=0.2, max_requests=20_000, max_seconds=300) as load:
        late.start()
        probes = 0

        def warm_and_out_of_rotation_until_ready() -> bool:
            nonlocal probes
            probes += 1
            # Our probe, named so that the replica's log tells it from HAProxy's checks.
            headers = {"X-Request-ID": f"probe-{probes}"}
            status = httpx.get(late.url + "/readyz", headers=headers, timeout=10).status_code
            if status == 503:
                # HAProxy needs two 200s in a row (rise 2) to route here: while we see 503 it
                # cannot be in rotation yet.
                assert not cluster.balancer.server_states()["replica3"].startswith("UP")
            return status == 200

        wait_until(warm_and_out_of_rotation_until_ready, timeout=300, interval=0.05, what="replica3 to warm up")
        cluster.wait_routed(["replica3"], timeout=60)
        wait_until(lambda: any(o.served_by == "replica3" for o in load.outcomes()), timeout=60,
                   what="traffic on replica3 once ready")  # fmt: skip

    assert not load.failures(), load.failures()[:5]
    assert probes > 1, "the replica was ready at once: the folder is too small to see a warm-up"

    def access_lines() -> list[dict[str, Any]]:
        return [e for e in json_logs(late) if e.get("logger") == "app.access"]

    # Access lines are written in batches (every ~100 ms): wait for the API's to be written.
    wait_until(lambda: any(e["path"].startswith("/api/") for e in access_lines()), what="the API's access lines")
    entries = access_lines()
    first_ready = next(i for i, e in enumerate(entries) if e["path"] == "/readyz" and e["status"] == 200)
    before, after = entries[:first_ready], entries[first_ready:]
    assert not [e for e in before if e["path"].startswith("/api/")], "API traffic reached the replica while it warmed"
    checks = [e for e in before if e["path"] == "/readyz" and not e["request_id"].startswith("probe-")]
    assert checks and all(e["status"] == 503 for e in checks), "HAProxy's checks saw it warming"
    assert any(e["path"].startswith("/api/") for e in after)


def test_a_replica_killed_mid_load_costs_the_callers_nothing(
    tmp_path: Path, make_cluster: Callable[..., Cluster]
) -> None:
    folder = tmp_path / "sessions"
    ids = generate(folder, 2_000, seed=11)
    cluster = make_cluster(folder)
    cluster.start()
    with httpx.Client(base_url=cluster.url, timeout=30) as client:
        before = share(cluster, ids[:300], client)
    victim = cluster.replica("replica2")
    orphaned = [job_id for job_id, owner in before.items() if owner == victim.name]
    assert orphaned

    with Load(cluster.url, ids, threads=4, list_share=0.3, max_requests=5_000, max_seconds=120) as load:
        wait_until(lambda: load.count() >= 300, timeout=60, what="load before the kill")
        victim.kill()
        killed_at = time.monotonic()
        cluster.wait_routed([victim.name], up=False, timeout=30)
        out_at = time.monotonic()
        # A response that left the replica just before the kill may reach its caller just after.
        settled = killed_at + 1.0
        wait_until(lambda: sum(o.at > settled for o in load.outcomes()) >= 300, timeout=60, what="load after the kill")

    assert not load.failures(), load.failures()[:5]
    assert all(o.served_by != victim.name for o in load.outcomes() if o.at > settled)
    counters = cluster.balancer.server_counters(victim.name)
    assert counters["wretr"] + counters["wredis"] > 0, f"no request met the dead replica: {counters}"
    assert out_at - killed_at < 10

    with httpx.Client(base_url=cluster.url, timeout=30) as client:
        # Its share went to the others meanwhile...
        assert all(served_by(client.get(f"/api/v2/jobs/{job_id}")) != victim.name for job_id in orphaned)
        # ...and comes back to it, exactly, when it is back: the ring is the same.
        victim.start()
        victim.wait_ready(120)
        cluster.wait_routed([victim.name], timeout=30)
        assert share(cluster, list(before), client) == before


# --- python -m cluster ---------------------------------------------------------------------------


def run_cluster(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONS_", "CLUSTER_"))}
    with open(tmp_path / "cluster.out", "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cluster"],
            cwd=REPO,
            env={**base, "CLUSTER_DIR": str(tmp_path / "run"), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def banner(tmp_path: Path, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The URL and the pids `python -m cluster` prints once everything is up."""

    def printed() -> str:
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode}: {(tmp_path / 'cluster.out').read_text()}")
        text = (tmp_path / "cluster.out").read_text()
        return text if "stops them all" in text else ""

    text = wait_until(printed, timeout=120, what="the cluster's banner")
    url = next(line.split()[1] for line in text.splitlines() if line.strip().startswith("use "))
    pids = [int(pid) for pid in re.findall(r"\bpid (\d+)", text)]
    return {"url": url, "pids": pids, "text": text}


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # exited; a container's init may be slow to reap


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_python_m_cluster_serves_one_url_and_leaves_nothing_behind(tmp_path: Path, sig: signal.Signals) -> None:
    folder = tmp_path / "sessions"
    ids = small_folder(folder, 20)
    process = run_cluster(
        tmp_path,
        {"CLUSTER_REPLICAS": "2", "CLUSTER_PORT": str(free_port()), "SESSIONS_DIR": str(folder),
         "SESSIONS_SHUTDOWN_DELAY_S": "0", "SESSIONS_GRACEFUL_TIMEOUT_S": "5"},
    )  # fmt: skip
    try:
        shown = banner(tmp_path, process)
        assert len(shown["pids"]) == 3, shown["text"]  # HAProxy and two replicas
        assert "replica2" in shown["text"] and "replica3" not in shown["text"]
        assert (tmp_path / "run" / "logs" / "replica1.log").exists()
        with httpx.Client(base_url=shown["url"], timeout=30) as client:
            assert len(client.get("/api/v2/jobs").json()) == len(ids)
            assert {served_by(client.get(f"/api/v2/jobs/{i}")) for i in ids} == {"replica1", "replica2"}
        process.send_signal(sig)
        status = process.wait(60)
        if sig != signal.SIGKILL:
            output = (tmp_path / "cluster.out").read_text()
            assert status == 0, output
            assert "exit statuses" not in output, "a child did not stop cleanly"
        # SIGKILL leaves no chance to clean up: the children go by themselves (PR_SET_PDEATHSIG).
        wait_until(lambda: all(gone(pid) for pid in shown["pids"]), timeout=60, what="every child to exit")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_python_m_cluster_says_how_to_install_haproxy(tmp_path: Path) -> None:
    process = run_cluster(tmp_path, {"PATH": str(tmp_path / "empty")})
    assert process.wait(60) == 1
    output = (tmp_path / "cluster.out").read_text()
    assert "apt-get install -y haproxy" in output
    assert not (tmp_path / "run").exists(), "nothing started"


@pytest.mark.parametrize("env", [{"CLUSTER_REPLICAS": "0"}, {"CLUSTER_REPLICAS": "three"}, {"CLUSTER_PORT": "70000"}])
def test_python_m_cluster_rejects_bad_settings(tmp_path: Path, env: dict[str, str]) -> None:
    process = run_cluster(tmp_path, env)
    assert process.wait(60) == 2
    assert "python -m cluster" in (tmp_path / "cluster.out").read_text()
