# Generated from sessions_client/_async/mirror.py by client/scripts/unasync.py: edit that file, then run
# `make unasync`. tests/test_client_unasync.py fails while this file differs from what it makes.
"""A local copy of a collection kept equal to the service: the Kubernetes informer pattern.

A watch (sessions_client.reflector) does the listing, resuming and relisting, and turns every
relist into the difference from what the caller had; the mirror applies its events to a dict
that any thread may read (sessions_client.mirror), and calls the callbacks. `synced` is set
once the first initial state is in. The async mirror runs in a task, the sync one in a thread
of its own: written once, async, the sync code generated from this file by
client/scripts/unasync.py (`make unasync`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import TracebackType

from sessions_client._sync.client import SessionsClient
from sessions_client.concurrency import Event, Worker, settle, wait_event
from sessions_client.mirror import MirrorState, OnAdded, OnDeleted, OnModified, callback_failed
from sessions_client.models import Filter, Summary
from sessions_client.reflector import CollectionReflector

logger = logging.getLogger("sessions_client")


class Mirror:
    """A collection (with the list's filters) kept in a local dict in the background: by a
    thread for the sync mirror, by a task on the running loop for the async one.

        with Mirror(client, status="pending_hitl", on_added=notify) as mirror:
            mirror.wait_synced(timeout=30)
            ...  # mirror.get(job_id), mirror.snapshot(), len(mirror)

    Callbacks run in the mirror's task or thread, in the order of the changes: keep them short
    (hand work to a queue). The async mirror's may be coroutine functions (awaited in order).
    A callback that raises is logged and the mirror goes on. A problem that retrying cannot
    solve (401, 400) stops the mirror: `error` holds it and `wait_synced` raises it."""

    def __init__(
        self,
        client: SessionsClient,
        *,
        status: str | Iterable[str] | None = None,
        user_id: str | None = None,
        include_saved: bool = True,
        on_added: OnAdded | None = None,
        on_modified: OnModified | None = None,
        on_deleted: OnDeleted | None = None,
    ) -> None:
        self.client = client
        self.filter = Filter.of(status, user_id, include_saved)
        self.error: BaseException | None = None  # what stopped the mirror, if it failed
        self.reflector: CollectionReflector | None = None
        self.synced = Event()
        self._state = MirrorState(self.filter, on_added, on_modified, on_deleted)
        self._settled = Event()  # synced, or stopped: what wait_synced waits for
        self._worker = Worker(f"sessions-mirror {self.filter}")

    def __enter__(self) -> Mirror:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Mirror:
        """Start the mirror: its thread (sync), its task on the running loop (async)."""
        self._worker.start(self._run_worker)
        return self

    def run(self) -> None:
        """Keep the mirror in this thread or task until it is stopped (sync: by `stop()` from
        another thread; async: the task cancelled); raises what stops it."""
        try:
            self.reflector = CollectionReflector(self.filter, self.client.backoff)
            events = self.client.stream(self.reflector, stop=self._worker.stop_event, bookmarks=True)
            for event in events:
                call = self._state.apply(event)
                if call is not None:
                    try:
                        settle(call[0](*call[1]))
                    except Exception:  # noqa: BLE001 (logged: see callback_failed)
                        callback_failed(call)
                if event.synced:
                    self.synced.set()
                    self._settled.set()
        finally:
            self._settled.set()

    def _run_worker(self) -> None:
        try:
            self.run()
        except Exception as exc:  # noqa: BLE001 (kept for wait_synced and the owner to see)
            self.error = exc
            logger.error("mirror stopped: %s", exc, extra={"filter": str(self.filter)})

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Whether the first initial state is in within `timeout` seconds; raises what stopped
        the mirror if it failed first."""
        wait_event(self._settled, timeout)
        if self.error is not None:
            raise self.error
        return self.synced.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the mirror and wait for it: its thread (sync: its open stream is shut at once;
        waited for `timeout` seconds at most), its task (async: cancelled, its stream closed on
        the way out)."""
        self._worker.stop(timeout)

    @property
    def running(self) -> bool:
        return self._worker.running

    # --- the copy ------------------------------------------------------------------------------

    def get(self, job_id: str) -> Summary | None:
        return self._state.get(job_id)

    def snapshot(self) -> dict[str, Summary]:
        """A copy of the mirror now, by job id."""
        return self._state.snapshot()

    def __len__(self) -> int:
        return len(self._state)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._state

    @property
    def revision(self) -> str | None:
        return self._state.revision

    @property
    def lists(self) -> int:
        """Initial states applied: 1 after the first sync, one more per relist."""
        return self._state.lists
