"""Watchers agree with the folder: beside the folder-truth state machine, callers that list,
then watch from the list's revision and apply every event to a local dict (relisting on an
ERROR or a 410, as Kubernetes informers do), end equal to the folder once it is quiet, after
every random sequence of creates, rewrites, deletes, corruptions, repairs and touches. In each
watch mode, in both formats, for the collection (with and without a filter) and for jobs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.support import Server
from tests.support.reliability import Expected
from tests.support.watch import Watch
from tests.test_reliability_folder_truth import MAX_FILE_BYTES, MODES, FolderIsTheTruth

RESUME_WITHIN_S = 15.0  # a guard: a stream lives 0.5 s in these runs


class CollectionMirror:
    """A caller's local copy of the collection (one filter): list, watch from the list's
    revision, resume from the last revision seen when a stream ends (the server ends them after
    their lifetime), list again on an ERROR or a 410 (as Kubernetes informers do)."""

    def __init__(self, server: Server, query: str, sse: bool, status: str | None = None) -> None:
        self.server, self.query, self.sse, self.status = server, query, sse, status
        self.relists = self.resumes = 0
        self._relist()

    def _relist(self) -> None:
        response = httpx.get(f"{self.server.base_url}/api/v2/jobs?limit=1000&{self.query}", timeout=10)
        assert response.status_code == 200
        self.state = {item["job_id"]: item for item in response.json()}
        self.seen: set[str] = set()  # revisions of changes applied since the list: none twice
        self._watch(response.headers["x-revision"])

    def _watch(self, revision: str) -> None:
        self.revision = revision
        self.watch = Watch(
            self.server.base_url, f"/api/v2/jobs?watch=true&revision={revision}&{self.query}", sse=self.sse
        )
        self.applied = 0

    def _catch_up(self) -> None:
        events = self.watch.events[self.applied :]
        self.applied += len(events)
        for event in events:
            if event["type"] == "ERROR":
                self.watch.close()
                self.relists += 1
                self._relist()
                return
            if event["type"] != "BOOKMARK":
                assert event["revision"] not in self.seen, f"{self.query!r}: an event sent twice: {event}"
                self.seen.add(event["revision"])
                job_id = event["object"]["job_id"]
                if event["type"] == "DELETED":
                    self.state.pop(job_id, None)
                else:
                    self.state[job_id] = event["object"]
            self.revision = event["revision"]
        if self.watch.ended:
            self.watch.close()
            if self.watch.status == 410:
                self.relists += 1
                self._relist()
            else:
                self.resumes += 1
                self._watch(self.revision)

    def differs(self, expected: dict[str, Expected]) -> str | None:
        want = {
            job_id: e.item
            for job_id, e in expected.items()
            if e.item is not None and (self.status is None or e.item["status"] == self.status)
        }
        self._catch_up()
        if self.state != want:
            return f"collection mirror {self.query!r}: {sorted(self.state)} != {sorted(want)}"
        return None

    def close(self) -> None:
        self.watch.close()


class JobMirror:
    """A caller's local copy of one job: its document, or None; resuming by ETag when the
    server ends a stream."""

    def __init__(self, server: Server, job_id: str, sse: bool) -> None:
        self.server, self.job_id, self.sse = server, job_id, sse
        self.document: Any = None
        self.etag: str | None = None
        self._watch()

    def _watch(self) -> None:
        headers = {"Last-Event-ID": self.etag} if self.etag else {}
        self.watch = Watch(self.server.base_url, f"/api/v2/jobs/{self.job_id}?watch=true", headers, sse=self.sse)
        self.applied = 0

    def differs(self, expected: dict[str, Expected]) -> str | None:
        events = self.watch.events[self.applied :]
        self.applied += len(events)
        for event in events:
            if event["type"] in ("ADDED", "MODIFIED"):
                self.document, self.etag = event["object"], event["etag"]
            elif event["type"] == "DELETED":
                self.document, self.etag = None, None
        if self.watch.ended:
            if self.watch.failure is not None:
                return f"job mirror {self.job_id}: the stream failed ({self.watch.failure!r})"
            self.watch.close()
            self._watch()  # the server ended it (its lifetime): resume by ETag
        e = expected[self.job_id]
        want = orjson.loads(e.body) if e.status == 200 and e.body is not None else None
        document = self.document
        if document != want:
            return f"job mirror {self.job_id}: {document} != {want}"
        return None

    def close(self) -> None:
        self.watch.close()


class WatchersAgree(FolderIsTheTruth):
    def __init__(self) -> None:
        super().__init__()
        self.mirrors: list[CollectionMirror | JobMirror] = [
            CollectionMirror(self.server, "", sse=False),
            CollectionMirror(self.server, "status=running", sse=True, status="running"),
            JobMirror(self.server, "job-0", sse=False),
            JobMirror(self.server, "a", sse=True),
        ]

    def agreement(self) -> str | None:
        problem = super().agreement()
        if problem is not None:
            return problem
        expected = self.expectations()
        for watcher in self.mirrors:
            problem = watcher.differs(expected)
            if problem is not None:
                return problem
        return None

    resumes = 0  # over every run: the streams the server ended were resumed, not relisted

    def teardown(self) -> None:
        for watcher in self.mirrors:
            if isinstance(watcher, CollectionMirror):
                # The server ends a stream after its lifetime (0.5 s here): a run of quick steps
                # can be over before one ends, so each example waits (bounded) for one to end and
                # be resumed. Whether the mirror then agrees is checked by the next example's
                # steps; that resuming happened at all, by the test.
                deadline = time.monotonic() + RESUME_WITHIN_S
                while watcher.resumes == 0 and time.monotonic() < deadline:
                    watcher.differs(self.expectations())
                    time.sleep(0.05)
                WatchersAgree.resumes += watcher.resumes
            watcher.close()
        super().teardown()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", list(MODES))
def test_watchers_agree_with_the_folder(mode: str, sessions_dir: Path, serve: Callable[..., Server]) -> None:
    env = {
        **MODES[mode],
        "SESSIONS_MAX_FILE_BYTES": str(MAX_FILE_BYTES),
        "SESSIONS_LOG_LEVEL": "warning",
        "SESSIONS_BOOKMARK_S": "1",
        "SESSIONS_STREAM_TIMEOUT_S": "0.5",  # streams end mid-run: the callers resume
    }
    WatchersAgree.server = serve(sessions_dir, env=env)
    WatchersAgree.resumes = 0
    WatchersAgree.folder = sessions_dir
    run_state_machine_as_test(
        WatchersAgree,
        settings=settings(
            max_examples=3,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        ),
    )
    assert WatchersAgree.server.process.poll() is None
    assert WatchersAgree.resumes > 0, "no stream ended during the run: resuming went untested"
