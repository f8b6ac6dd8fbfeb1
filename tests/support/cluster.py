"""Support for the tests of several replicas behind the real HAProxy: a cluster fixture's
helpers, and callers that load it from threads, bounded in count and time, recording every
answer (status, the replica that served it, what went wrong)."""

from __future__ import annotations

import random
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from cluster import Cluster
from cluster.process import Child

# Fast teardown: nothing here tests the drain, and a replica stopped at the end of a test
# has no load balancer to wait for.
CLUSTER_ENV = {"SESSIONS_SHUTDOWN_DELAY_S": "0", "SESSIONS_GRACEFUL_TIMEOUT_S": "5", "SESSIONS_LOG_FORMAT": "json"}


@dataclass(frozen=True)
class Outcome:
    at: float  # time.monotonic() when the answer was complete
    kind: str  # "get" or "list"
    target: str
    status: int | None
    served_by: str | None
    problem: str | None  # None when the answer was what was asked for

    @property
    def ok(self) -> bool:
        return self.problem is None


def served_by(response: httpx.Response) -> str | None:
    return response.headers.get("x-served-by")


def json_logs(child: Child) -> list[dict[str, Any]]:
    """The JSON lines of a child's log (a replica's access and event lines)."""
    entries = []
    for line in child.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entries.append(orjson.loads(line))
    return entries


def _next_target(response: httpx.Response) -> str | None:
    link = response.headers.get("link", "")
    if 'rel="next"' not in link:
        return None
    url = link.split(";")[0].strip().strip("<>")
    parts = urllib.parse.urlsplit(url)
    return f"{parts.path}?{parts.query}"


class Load:
    """`threads` callers, each with its own keep-alive client to the load balancer: GETs of
    random jobs (the body must be that job) and, `list_share` of the time, a list walked for up
    to three pages (each a JSON array, at most `limit` long). Every request is recorded; every
    loop ends after `max_requests` requests per thread or `max_seconds`, whichever comes first."""

    def __init__(
        self,
        base_url: str,
        ids: list[str],
        threads: int = 4,
        list_share: float = 0.3,
        max_requests: int = 5000,
        max_seconds: float = 120.0,
        seed: int = 1,
    ) -> None:
        self.base_url = base_url
        self.ids = ids
        self.list_share = list_share
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self._outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(seed + i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.max_seconds + 60)

    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)

    def count(self) -> int:
        with self._lock:
            return len(self._outcomes)

    def failures(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes() if not outcome.ok]

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self._outcomes.append(outcome)

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.base_url, timeout=30.0) as client:
            for _ in range(self.max_requests):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                if rng.random() < self.list_share:
                    self._walk_list(client, rng)
                else:
                    job_id = rng.choice(self.ids)
                    self._request(client, "get", f"/api/v2/jobs/{job_id}", job_id)

    def _walk_list(self, client: httpx.Client, rng: random.Random) -> None:
        limit = rng.choice((10, 100))
        target: str | None = f"/api/v2/jobs?limit={limit}"
        for _ in range(3):
            if target is None:
                return
            response = self._request(client, "list", target, limit)
            target = _next_target(response) if response is not None else None

    def _request(self, client: httpx.Client, kind: str, target: str, expect: Any) -> httpx.Response | None:
        try:
            response = client.get(target)
        except httpx.HTTPError as exc:
            self._record(Outcome(time.monotonic(), kind, target, None, None, f"{type(exc).__name__}: {exc}"))
            return None
        problem = None
        if response.status_code != 200:
            problem = f"status {response.status_code}: {response.text[:200]}"
        else:
            try:
                body = response.json()
            except ValueError as exc:
                body, problem = None, f"not JSON ({exc}): {len(response.content)} bytes"
            if problem is None and kind == "get" and (not isinstance(body, dict) or body.get("job_id") != expect):
                problem = f"not the document of {expect}"
            if problem is None and kind == "list" and (not isinstance(body, list) or len(body) > expect):
                problem = "not a page of summaries"
        self._record(Outcome(time.monotonic(), kind, target, response.status_code, served_by(response), problem))
        return response


def share(cluster: Cluster, ids: list[str], client: httpx.Client) -> dict[str, str]:
    """Which replica answers each job id now (one GET each through the load balancer)."""
    owners = {}
    for job_id in ids:
        response = client.get(f"/api/v2/jobs/{job_id}")
        assert response.status_code == 200, response.text
        owner = served_by(response)
        assert owner in {replica.name for replica in cluster.replicas}, response.headers
        owners[job_id] = owner
    return owners


def generated_ids(folder: Path) -> list[str]:
    return sorted(path.stem for path in folder.glob("*.json"))
