"""Three replicas behind HAProxy, each with a cache a third of the folder: consistent hashing on
the job id (the reference configuration) against round robin (the same configuration with the
job backend balanced round robin), on the same replicas through two HAProxy instances.

Under round robin every replica sees every job, so a cache of a third of the folder hits about a
third of the time; hashed, each replica sees only its share, which fits. The hit ratio comes from
the replicas' own counters (/metrics: sessions_cache_hits_total / (hits + misses)) over each
measured wrk run; each measured run follows a priming run of the same mode, so that the caches
hold what that mode leaves in them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import probe, server, wrk
from bench.report import Figure, median, ratio
from bench.throughput import id_paths
from cluster import Cluster, haproxy
from cluster.replica import HOST, free_port

REPLICAS = 3
_HASHED = "    balance uri path-only\n    hash-type consistent\n"


def round_robin(configuration: str) -> str:
    """The configuration with the job backend balanced round robin instead of hashed."""
    if _HASHED not in configuration:
        raise RuntimeError("the reference configuration no longer hashes the job backend as this benchmark expects")
    return configuration.replace(_HASHED, "    balance roundrobin\n")


def cache_counters(cluster: Cluster) -> tuple[float, float]:
    """Cache hits and misses summed over the replicas."""
    hits = misses = 0.0
    for replica in cluster.replicas:
        hits += probe.metric(replica.port, "sessions_cache_hits_total") or 0.0
        misses += probe.metric(replica.port, "sessions_cache_misses_total") or 0.0
    return hits, misses


def _ours_cpu_s(cluster: Cluster, balancer: haproxy.Balancer) -> float:
    pids = [child.pid for child in (*cluster.replicas, balancer) if child.pid is not None]
    return sum(wrk.process_cpu_s(pid) for pid in pids)


def _busy_s() -> float:
    return wrk.core_busy_s(server.SERVER_CORE) + wrk.core_busy_s(server.CLIENT_CORE)


def run(
    folder: Path, ids: list[str], work: Path, rounds: int, seconds: float, log: Callable[[str], None]
) -> tuple[list[Figure], dict[str, Any]]:
    cache_entries = len(ids) // REPLICAS
    settings = {**server.SERVICE_ENV, "SESSIONS_CACHE_MAX_ENTRIES": str(cache_entries)}
    pin_server, pin_client = ("taskset", "-c", str(server.SERVER_CORE)), ("taskset", "-c", str(server.CLIENT_CORE))
    # The replicas share the server core; HAProxy runs beside wrk on the other one.
    cluster = Cluster(folder, work / "hashing", REPLICAS, settings, prefix=pin_server, haproxy_prefix=pin_client)
    rr_config = work / "hashing" / "haproxy-round-robin.cfg"
    rr = haproxy.Balancer(rr_config, f"{HOST}:{free_port()}", f"{HOST}:{free_port()}",
                          [replica.address for replica in cluster.replicas], cluster.log_dir, pin_client,
                          name="haproxy-round-robin")  # fmt: skip
    paths = wrk.write_paths(work / "hashing-paths.txt", id_paths(ids))
    modes = {"hashing": cluster.balancer, "round robin": rr}
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    try:
        cluster.start(timeout=600)
        rr_config.parent.mkdir(parents=True, exist_ok=True)
        rr_config.write_text(round_robin(haproxy.render(REPLICAS)), encoding="utf-8")
        rr.start()
        rr.wait_routed([replica.name for replica in cluster.replicas], timeout=60)
        order = list(modes)
        for r in range(rounds):
            for mode in order[r % 2 :] + order[: r % 2]:
                balancer = modes[mode]
                # Priming, as long as the measured run: the caches settle to what this mode leaves.
                wrk.run(balancer.url, paths, max(3.0, seconds), seed=100 + r)
                hits, misses = cache_counters(cluster)
                busy, ours = _busy_s(), _ours_cpu_s(cluster, balancer)
                result = wrk.run(balancer.url, paths, seconds, seed=r + 1)
                # Both cores' busy time that was neither the replicas, HAProxy nor wrk: others'.
                others = _busy_s() - busy - (_ours_cpu_s(cluster, balancer) - ours) - result.client_cpu * result.seconds
                hits_after, misses_after = cache_counters(cluster)
                hit_ratio = ratio(hits_after - hits, (hits_after - hits) + (misses_after - misses))
                runs[mode].append({"rps": result.rps, "p99_ms": result.p99_ms, "hit_ratio": hit_ratio,
                                   "errors": result.errors, "wrk_cpu": result.client_cpu,
                                   "others_cores": max(0.0, others) / result.seconds})  # fmt: skip
                log(f"  round {r + 1}/{rounds} {mode}: {result.rps:,.0f} req/s, p99 {result.p99_ms:.2f} ms, "
                    f"cache hit ratio {hit_ratio:.3f}, errors {result.errors}, "
                    f"other processes {runs[mode][-1]['others_cores']:.2f} cores")  # fmt: skip
    finally:
        rr.stop()
        cluster.stop()
    stats = {
        mode: {key: median([x[key] for x in results]) for key in ("rps", "p99_ms", "hit_ratio")}
        | {"errors": sum(x["errors"] for x in results)}
        for mode, results in runs.items()
    }
    hashed, spread = stats["hashing"], stats["round robin"]
    errors = hashed["errors"] + spread["errors"]
    worst = max(x["others_cores"] for results in runs.values() for x in results)
    noise = f"other processes used at most {worst:.2f} of the 2 cores in a run" + (
        " (noisy machine: rerun on a quiet one)" if worst > 0.2 else ""
    )
    figures = [
        Figure(f"hashing: cache hit ratio, consistent hashing vs round robin (3 replicas, cache 1/3 of "
               f"{len(ids):,})", ratio(hashed["hit_ratio"], spread["hit_ratio"]), "x", ">= 2",
               {"errors": errors, "hit_ratio": {"hashing": hashed["hit_ratio"], "round robin": spread["hit_ratio"]}},
               f"hit ratio medians: hashing {hashed['hit_ratio']:.3f}, round robin {spread['hit_ratio']:.3f}"),
        Figure("hashing: GET through HAProxy, consistent hashing vs round robin",
               ratio(hashed["rps"], spread["rps"]), "x", ">= 1",
               {"errors": errors, "rps": {"hashing": hashed["rps"], "round robin": spread["rps"]}},
               f"req/s medians: hashing {hashed['rps']:,.0f}, round robin {spread['rps']:,.0f}; p99 "
               f"{hashed['p99_ms']:.2f} vs {spread['p99_ms']:.2f} ms; three replicas on one core, HAProxy and "
               f"wrk on the other; {noise}"),
    ]  # fmt: skip
    return figures, {"runs": runs, "cache_entries": cache_entries}
