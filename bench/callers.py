"""Callers of a cluster through the callers' library (sessions_client), as the services that
call this one run it: readers (get, list pages, long-poll waits), watchers (mirrors of the
collection, with and without a filter, and job watches), and a writer changing the folder
meanwhile. Every loop is bounded in count and time, every failure a caller would see is
recorded. The failover tests (tests/test_cluster_callers.py) and the failover benchmark
(bench/failover.py) drive them across restarts and kills of replicas."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sessions_client import (
    Backoff,
    EventType,
    JobEvent,
    Mirror,
    NotFound,
    Session,
    SessionsClient,
    Stop,
    WaitTimeout,
)

# For tests: resumes and retries come back fast; the backoff still doubles and jitters as in
# production. The benchmark uses the library's defaults (Backoff()).
FAST_BACKOFF = Backoff(initial=0.05, maximum=1.0)
# The statuses the writer moves its sessions through, and the one the filtered mirror wants.
STATUSES = ("running", "pending_hitl", "completed", "failed")
FILTERED_STATUS = "running"


@dataclass(frozen=True)
class Failure:
    at: float  # time.monotonic()
    kind: str  # get, list, wait, mirror, job watch, write
    what: str


class Record:
    """Calls made and failures seen, shared by every caller's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self._failures: list[Failure] = []

    def ok(self, kind: str) -> None:
        with self._lock:
            self.calls[kind] = self.calls.get(kind, 0) + 1

    def failed(self, kind: str, what: str) -> None:
        with self._lock:
            self.calls[kind] = self.calls.get(kind, 0) + 1
            self._failures.append(Failure(time.monotonic(), kind, what))

    def failures(self) -> list[Failure]:
        with self._lock:
            return list(self._failures)

    def count(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(n for k, n in self.calls.items() if kind in (None, k))


def write_session(folder: Path, job_id: str, status: str, stamp: str) -> None:
    """Rewrite one session's status and updated_at, as the job system does (temp + rename)."""
    path = folder / f"{job_id}.json"
    document: dict[str, Any] = orjson.loads(path.read_bytes()) if path.exists() else {"job_id": job_id}
    document.update(status=status, updated_at=stamp)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temp.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    os.replace(temp, path)


class Writer:
    """A thread that changes the folder: each `interval`, the next of `hot` sessions moves to
    the next status (so it enters and leaves the filtered mirror's view); every `delete_every`
    writes, one of `deletable` is deleted, and put back (as a new version) the next time."""

    def __init__(
        self,
        folder: Path,
        hot: list[str],
        deletable: list[str],
        record: Record,
        interval: float = 0.02,
        delete_every: int = 10,
        max_writes: int = 100_000,
        max_seconds: float = 300.0,
    ) -> None:
        self.folder = folder
        self.hot, self.deletable = hot, deletable
        self.record = record
        self.interval, self.delete_every = interval, delete_every
        self.max_writes, self.max_seconds = max_writes, max_seconds
        self.writes = 0
        self._deleted: dict[str, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop writing, and put back what is deleted: the folder then holds every session."""
        self._stop.set()
        self._thread.join(self.max_seconds + 30)
        for job_id, body in self._deleted.items():
            (self.folder / f"{job_id}.json").write_bytes(body)
        self._deleted.clear()

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        statuses = itertools.cycle(STATUSES)
        hot = itertools.cycle(self.hot)
        deletable = itertools.cycle(self.deletable)
        while self.writes < self.max_writes and time.monotonic() < deadline and not self._stop.wait(self.interval):
            self.writes += 1
            try:
                if self.deletable and self.writes % self.delete_every == 0:
                    self._delete_or_restore(next(deletable))
                else:
                    write_session(self.folder, next(hot), next(statuses), f"2026-12-02T12:00:00.{self.writes:06d}Z")
            except OSError as exc:
                self.record.failed("write", repr(exc))

    def _delete_or_restore(self, job_id: str) -> None:
        path = self.folder / f"{job_id}.json"
        if job_id in self._deleted:
            path.write_bytes(self._deleted.pop(job_id))
        else:
            self._deleted[job_id] = path.read_bytes()
            path.unlink()


class Readers:
    """Threads that read through the library, each with its own client: `get` of random stable
    sessions (never deleted), `list` (up to three pages of 100), `wait` (long polls for the
    next version of a hot session, which a writer changes every few hundred ms: it must come),
    and `poll` (the same over a quiet folder: `wait_timeout` without a change is an answer)."""

    def __init__(
        self,
        base_url: str,
        stable: list[str],
        hot: list[str],
        record: Record,
        kinds: Iterable[str] = ("get", "get", "list", "wait"),
        max_calls: int = 100_000,
        max_seconds: float = 300.0,
        wait_timeout: float = 30.0,
        backoff: Backoff = FAST_BACKOFF,
    ) -> None:
        self.base_url = base_url
        self.backoff = backoff
        self.stable, self.hot = stable, hot
        self.record = record
        self.max_calls, self.max_seconds, self.wait_timeout = max_calls, max_seconds, wait_timeout
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(kind, i), name=f"reader {kind}", daemon=True)
            for i, kind in enumerate(kinds)
        ]

    def start(self) -> Readers:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.max_seconds + self.wait_timeout + 30)

    def _run(self, kind: str, seed: int) -> None:
        rng = random.Random(seed)
        call: Callable[[SessionsClient, random.Random], object] = getattr(self, f"_{kind}")
        deadline = time.monotonic() + self.max_seconds
        with SessionsClient(self.base_url, backoff=self.backoff) as client:
            for _ in range(self.max_calls):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    call(client, rng)
                except Exception as exc:  # noqa: BLE001 (what a caller would see: recorded, the test fails)
                    self.record.failed(kind, repr(exc))
                else:
                    self.record.ok(kind)

    def _get(self, client: SessionsClient, rng: random.Random) -> None:
        job_id = rng.choice(self.stable)
        if client.get(job_id).job_id != job_id:
            raise AssertionError(f"get({job_id!r}) returned another session")

    def _list(self, client: SessionsClient, rng: random.Random) -> None:
        for page in itertools.islice(client.pages(limit=100), 3):
            if len(page.items) > 100:
                raise AssertionError(f"a page of {len(page.items)} items, asked for 100")

    def _wait(self, client: SessionsClient, rng: random.Random) -> None:
        job_id = rng.choice(self.hot)
        seen = client.get(job_id).etag
        client.wait(job_id, until=lambda session: session.etag != seen, timeout=self.wait_timeout)

    def _poll(self, client: SessionsClient, rng: random.Random) -> None:
        with contextlib.suppress(WaitTimeout):
            self._wait(client, rng)


class JobWatch:
    """One job watched in a thread: the latest version it was sent (None once deleted)."""

    def __init__(self, client: SessionsClient, job_id: str, record: Record) -> None:
        self.job_id = job_id
        self.session: Session | None = None
        self.events = 0
        self.record = record
        self._client = client
        self._stop = Stop()
        self._thread = threading.Thread(target=self._run, name=f"job watch {job_id}", daemon=True)

    def start(self) -> JobWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            for event in self._client.watch_job(self.job_id, stop=self._stop):
                self._apply(event)
        except Exception as exc:  # noqa: BLE001 (a watch that gave up: recorded, the test fails)
            self.record.failed("job watch", repr(exc))

    def _apply(self, event: JobEvent) -> None:
        self.events += 1
        self.session = event.session if event.type is not EventType.DELETED else None


class Watchers:
    """`mirrors` pairs of Mirrors (the whole collection, and status=running) and one job watch
    per hot session (the ones that change), each pair with a client of its own."""

    def __init__(
        self, base_url: str, hot: list[str], record: Record, mirrors: int = 1, backoff: Backoff = FAST_BACKOFF
    ) -> None:
        self.record = record
        self.clients = [SessionsClient(base_url, backoff=backoff) for _ in range(mirrors)]
        self.mirrors: list[Mirror] = []
        for client in self.clients:
            self.mirrors += [Mirror(client), Mirror(client, status=FILTERED_STATUS)]
        self.jobs = [JobWatch(self.clients[i % mirrors], job_id, record) for i, job_id in enumerate(hot)]

    def start(self, synced_within: float = 60.0) -> Watchers:
        for mirror in self.mirrors:
            mirror.start()
        for job in self.jobs:
            job.start()
        deadline = time.monotonic() + synced_within
        for mirror in self.mirrors:
            if not mirror.wait_synced(max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"a mirror ({mirror.filter}) not synced within {synced_within} s")
        return self

    def stop(self) -> None:
        for job in self.jobs:
            job.stop()
        for mirror in self.mirrors:
            mirror.stop()
            if mirror.error is not None:
                self.record.failed("mirror", repr(mirror.error))
        for client in self.clients:
            client.close()

    def relists(self) -> int:
        return sum(mirror.reflector.relists for mirror in self.mirrors if mirror.reflector is not None)

    def resumes(self) -> int:
        return sum(mirror.reflector.resumes for mirror in self.mirrors if mirror.reflector is not None)

    def differences(self, truth: Truth) -> list[str]:
        """How the watchers' copies differ from `truth` (empty: every copy is equal to it)."""
        found = []
        for mirror in self.mirrors:
            wanted = truth.running if mirror.filter.statuses else truth.summaries
            have = {job_id: dict(summary.data) for job_id, summary in mirror.snapshot().items()}
            if have != wanted:
                wrong = sorted(k for k in have.keys() | wanted.keys() if have.get(k) != wanted.get(k))
                found.append(f"mirror ({mirror.filter}): {len(wrong)} sessions differ, e.g. {wrong[:3]}")
        for job in self.jobs:
            etag = job.session.etag if job.session is not None else None
            if etag != truth.etags.get(job.job_id):
                found.append(f"job watch {job.job_id}: {etag} instead of {truth.etags.get(job.job_id)}")
        return found


@dataclass(frozen=True)
class Truth:
    """What the service says, read from one replica directly: the list (every page), the
    filtered list, and the ETags of some sessions (None: not found)."""

    summaries: dict[str, dict[str, Any]]
    running: dict[str, dict[str, Any]]
    etags: dict[str, str | None]

    @classmethod
    def read(cls, replica_url: str, job_ids: Iterable[str]) -> Truth:
        with SessionsClient(replica_url, backoff=FAST_BACKOFF) as client:
            summaries = {item.job_id: dict(item.data) for item in client.list()}
            running = {item.job_id: dict(item.data) for item in client.list(status=FILTERED_STATUS)}
            etags: dict[str, str | None] = {}
            for job_id in job_ids:
                try:
                    etags[job_id] = client.get(job_id).etag
                except NotFound:
                    etags[job_id] = None
        return cls(summaries, running, etags)


def split_ids(ids: list[str], hot: int, deletable: int) -> tuple[list[str], list[str], list[str]]:
    """The folder's ids as (hot: changed by the writer, deletable, stable: neither)."""
    return ids[:hot], ids[hot : hot + deletable], ids[hot + deletable :]


def agreed_truth(replica_urls: Iterable[str], job_ids: Iterable[str], folder: Path) -> Truth | None:
    """The service's state once every replica says the same, and its list holds exactly the
    folder's sessions; None while they differ (a change still on its way)."""
    job_ids = list(job_ids)
    truths = [Truth.read(url, job_ids) for url in replica_urls]
    if any(truth != truths[0] for truth in truths[1:]):
        return None
    if set(truths[0].summaries) != {path.stem for path in folder.glob("*.json")}:
        return None
    return truths[0]
