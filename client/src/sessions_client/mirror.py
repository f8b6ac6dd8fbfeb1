"""A local copy of a collection kept equal to the service: the Kubernetes informer pattern.

A watch (sessions_client.reflector) does the listing, resuming and relisting, and turns every
relist into the difference from what the caller had; the mirror applies its events to a dict
that any thread may read, and calls the callbacks. `synced` is set once the first initial
state is in. Mirror runs in a thread of its own, AsyncMirror in a task."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from sessions_client.aio import AsyncSessionsClient
from sessions_client.client import SessionsClient, Stop
from sessions_client.models import EventType, Filter, Summary, WatchEvent
from sessions_client.reflector import CollectionReflector

logger = logging.getLogger("sessions_client")

OnAdded = Callable[[Summary], Any]
OnModified = Callable[[Summary, Summary], Any]  # (old, new)
OnDeleted = Callable[[Summary], Any]
Call = tuple[Callable[..., Any], tuple[Summary, ...]]


class MirrorState:
    """The copy itself, shared by both mirrors: one dict, one lock held only around dict
    operations, and the callbacks an event calls (made outside the lock, by the caller)."""

    def __init__(
        self, filter: Filter, on_added: OnAdded | None, on_modified: OnModified | None, on_deleted: OnDeleted | None
    ) -> None:
        self.filter = filter
        self.revision: str | None = None  # the service's revision the copy is at
        self.lists = 0  # initial states applied: the first one, then one per relist
        self._items: dict[str, Summary] = {}
        self._lock = threading.Lock()
        self._on_added, self._on_modified, self._on_deleted = on_added, on_modified, on_deleted

    def apply(self, event: WatchEvent) -> Call | None:
        """Apply one event; the callback it calls, if any."""
        summary = event.object
        with self._lock:
            self.revision = event.revision
            if event.type is EventType.BOOKMARK:
                self.lists += event.synced
                return None
            if summary is None:
                return None
            if event.type is EventType.DELETED:
                old = self._items.pop(summary.job_id, None)
                return (self._on_deleted, (old or summary,)) if self._on_deleted is not None else None
            self._items[summary.job_id] = summary
        if event.type is EventType.MODIFIED and event.old is not None:
            return (self._on_modified, (event.old, summary)) if self._on_modified is not None else None
        return (self._on_added, (summary,)) if self._on_added is not None else None

    def get(self, job_id: str) -> Summary | None:
        with self._lock:
            return self._items.get(job_id)

    def snapshot(self) -> dict[str, Summary]:
        with self._lock:
            return dict(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, job_id: object) -> bool:
        with self._lock:
            return job_id in self._items


def _callback_failed(call: Call) -> None:
    # A callback's bug must not stop the mirror, which would then drift from the service.
    logger.exception("mirror callback %s failed", getattr(call[0], "__qualname__", call[0]))


class _MirrorBase:
    def __init__(
        self,
        status: str | Iterable[str] | None,
        user_id: str | None,
        include_saved: bool,
        on_added: OnAdded | None,
        on_modified: OnModified | None,
        on_deleted: OnDeleted | None,
    ) -> None:
        self.filter = Filter.of(status, user_id, include_saved)
        self._state = MirrorState(self.filter, on_added, on_modified, on_deleted)
        self.error: BaseException | None = None  # what stopped the mirror, if it failed
        self.reflector: CollectionReflector | None = None

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

    def _reflector(self, client: SessionsClient | AsyncSessionsClient) -> CollectionReflector:
        self.reflector = CollectionReflector(self.filter, client.backoff)
        return self.reflector


class Mirror(_MirrorBase):
    """A collection (with the list's filters) kept in a local dict by a background thread.

        with Mirror(client, status="pending_hitl", on_added=notify) as mirror:
            mirror.wait_synced(timeout=30)
            ...  # mirror.get(job_id), mirror.snapshot(), len(mirror)

    Callbacks run in the mirror's thread, in the order of the changes: keep them short (hand
    work to a queue). A callback that raises is logged and the mirror goes on. A problem that
    retrying cannot solve (401, 400) stops the mirror: `error` holds it and `wait_synced`
    raises it."""

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
        super().__init__(status, user_id, include_saved, on_added, on_modified, on_deleted)
        self.client = client
        self.synced = threading.Event()
        self._settled = threading.Event()  # synced, or stopped: what wait_synced waits for
        self._stop = Stop()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Mirror:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Mirror:
        if self._thread is not None:
            raise RuntimeError("a mirror starts once")
        self._thread = threading.Thread(target=self._run_thread, name=f"sessions-mirror {self.filter}", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """Keep the mirror in this thread until `stop()` (from another); raises what stops it."""
        try:
            for event in self.client.stream(self._reflector(self.client), stop=self._stop, bookmarks=True):
                call = self._state.apply(event)
                if call is not None:
                    try:
                        call[0](*call[1])
                    except Exception:  # noqa: BLE001 (logged: see _callback_failed)
                        _callback_failed(call)
                if event.synced:
                    self.synced.set()
                    self._settled.set()
        finally:
            self._settled.set()

    def _run_thread(self) -> None:
        try:
            self.run()
        except Exception as exc:  # noqa: BLE001 (kept for wait_synced and the owner to see)
            self.error = exc
            logger.error("mirror stopped: %s", exc, extra={"filter": str(self.filter)})

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Whether the first initial state is in within `timeout` seconds; raises what stopped
        the mirror if it failed first."""
        self._settled.wait(timeout)
        if self.error is not None:
            raise self.error
        return self.synced.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (its open stream is shut at once) and wait for it."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


class AsyncMirror(_MirrorBase):
    """The async twin of Mirror, kept by a task on the running loop. Callbacks may be plain
    functions or coroutines (awaited in order).

        async with AsyncMirror(client, include_saved=False) as mirror:
            await mirror.wait_synced(timeout=30)
    """

    def __init__(
        self,
        client: AsyncSessionsClient,
        *,
        status: str | Iterable[str] | None = None,
        user_id: str | None = None,
        include_saved: bool = True,
        on_added: OnAdded | None = None,
        on_modified: OnModified | None = None,
        on_deleted: OnDeleted | None = None,
    ) -> None:
        super().__init__(status, user_id, include_saved, on_added, on_modified, on_deleted)
        self.client = client
        self.synced = asyncio.Event()
        self._settled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncMirror:
        return self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.stop()

    def start(self) -> AsyncMirror:
        """Start the mirror's task on the running loop."""
        if self._task is not None:
            raise RuntimeError("a mirror starts once")
        self._task = asyncio.get_running_loop().create_task(self._run_task(), name=f"sessions-mirror {self.filter}")
        return self

    async def run(self) -> None:
        """Keep the mirror in this task until it is cancelled; raises what stops it."""
        try:
            async for event in self.client.stream(self._reflector(self.client), bookmarks=True):
                call = self._state.apply(event)
                if call is not None:
                    try:
                        result = call[0](*call[1])
                        if inspect.isawaitable(result):
                            await result
                    except Exception:  # noqa: BLE001 (logged: see _callback_failed)
                        _callback_failed(call)
                if event.synced:
                    self.synced.set()
                    self._settled.set()
        finally:
            self._settled.set()

    async def _run_task(self) -> None:
        try:
            await self.run()
        except Exception as exc:  # noqa: BLE001 (kept for wait_synced and the owner to see)
            self.error = exc
            logger.error("mirror stopped: %s", exc, extra={"filter": str(self.filter)})

    async def wait_synced(self, timeout: float | None = None) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout)
        if self.error is not None:
            raise self.error
        return self.synced.is_set()

    async def stop(self) -> None:
        """Cancel the task and wait for it (its stream is closed on the way out)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()
