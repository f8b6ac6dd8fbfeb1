"""Watchers agree with the folder: beside the folder-truth state machine, callers that list,
then watch from the list's revision and apply every event to a local dict (relisting on an
ERROR or a 410, as Kubernetes informers do), end equal to the folder once it is quiet, after
every random sequence of creates, rewrites, deletes, corruptions, repairs and touches. In each
watch mode, in both formats, for the collection (with and without a filter) and for jobs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.reliability_support import Expected
from tests.support import Server
from tests.test_reliability_folder_truth import MAX_FILE_BYTES, MODES, FolderIsTheTruth
from tests.watch_support import Watch


class CollectionMirror:
    """A caller's local copy of the collection (one filter)."""

    def __init__(self, server: Server, query: str, sse: bool, status: str | None = None) -> None:
        self.server, self.query, self.sse, self.status = server, query, sse, status
        self.relists = 0
        self._start()

    def _start(self) -> None:
        response = httpx.get(f"{self.server.base_url}/api/v2/jobs?limit=1000&{self.query}", timeout=10)
        assert response.status_code == 200
        self.listed = {item["job_id"]: item for item in response.json()}
        revision = response.headers["x-revision"]
        self.watch = Watch(
            self.server.base_url, f"/api/v2/jobs?watch=true&revision={revision}&{self.query}", sse=self.sse
        )

    def state(self) -> dict[str, Any]:
        events = list(self.watch.events)
        if self.watch.ended or any(event["type"] == "ERROR" for event in events):
            self.watch.close()
            self.relists += 1
            self._start()
            events = []
        return _apply(self.listed, events)

    def differs(self, expected: dict[str, Expected]) -> str | None:
        want = {
            job_id: e.item
            for job_id, e in expected.items()
            if e.item is not None and (self.status is None or e.item["status"] == self.status)
        }
        got = self.state()
        if got != want:
            return f"collection mirror {self.query!r}: {sorted(got)} != {sorted(want)}"
        return None

    def close(self) -> None:
        self.watch.close()


def _apply(listed: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    state = dict(listed)
    for event in events:
        if event["type"] in ("ADDED", "MODIFIED"):
            state[event["object"]["job_id"]] = event["object"]
        elif event["type"] == "DELETED":
            state.pop(event["object"]["job_id"], None)
    return state


class JobMirror:
    """A caller's local copy of one job: its document, or None."""

    def __init__(self, server: Server, job_id: str, sse: bool) -> None:
        self.job_id = job_id
        self.watch = Watch(server.base_url, f"/api/v2/jobs/{job_id}?watch=true", sse=sse)

    def differs(self, expected: dict[str, Expected]) -> str | None:
        document = None
        for event in list(self.watch.events):
            if event["type"] in ("ADDED", "MODIFIED"):
                document = event["object"]
            elif event["type"] == "DELETED":
                document = None
        e = expected[self.job_id]
        want = orjson.loads(e.body) if e.status == 200 and e.body is not None else None
        if self.watch.ended:
            return f"job mirror {self.job_id}: the stream ended ({self.watch.failure!r})"
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

    def teardown(self) -> None:
        for watcher in self.mirrors:
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
    }
    WatchersAgree.server = serve(sessions_dir, env=env)
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
