"""The native file watcher: a thread that turns watchfiles' events into job ids to look at.

Every event only means "look at this path again": watchfiles batches are unordered sets, report
a write-then-rename as `added`, and drop `modified` for a path added or deleted in the same
batch, so the change type is never trusted. What events miss (an inotify queue overflow, a
folder replaced under us) the reconciler's rescan catches.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import watchfiles

from app.store.pending import PendingChanges
from app.store.sessionfile import job_id_for

logger = logging.getLogger("app.watcher")

# Freshness wants events within tens of ms: yield once a change has been quiet for STEP_MS, and
# never hold changes longer than DEBOUNCE_MS (watchfiles' defaults wait up to 1.6 s).
STEP_MS = 10
DEBOUNCE_MS = 100
# How often the watch loop wakes with no events, to notice that the folder was replaced.
TICK_MS = 200
MAX_BACKOFF_S = 30.0


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class _StopAsking:
    """The stop event handed to watchfiles, which asks it whether to stop every STEP_MS while it
    waits. It asks only once its watch exists (the inotify watch is added before the wait
    begins, and changes from then on are kept for the next batch), so its first question is the
    moment the watch is up: sooner than the first batch, which an idle folder sends only after
    TICK_MS, and the warm-up waits for it."""

    def __init__(self, stop: threading.Event, on_watching: Callable[[], None]) -> None:
        self._stop = stop
        self._on_watching: Callable[[], None] | None = on_watching

    def is_set(self) -> bool:
        if self._on_watching is not None:
            on_watching, self._on_watching = self._on_watching, None
            on_watching()
        return self._stop.is_set()


class NativeWatcher:
    def __init__(self, root: Path, pending: PendingChanges, stop: threading.Event) -> None:
        self._root = root
        self._pending = pending
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name="sessions-watcher", daemon=True)
        # False while the native watch is down (could not start, or died): the reconciler
        # then polls at SESSIONS_POLL_INTERVAL_MS until it is back.
        self.healthy = threading.Event()
        # Set once the first watch is established (or has failed): the warm-up scan waits for
        # it, so that a file changed while the scan runs is not lost.
        self.settled = threading.Event()
        self.events = 0
        self.restarts = 0

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            identity = _identity(self._root)
            if identity is None:
                self._down(f"sessions folder {str(self._root)!r} is missing")
            else:
                try:
                    self._watch(identity)
                except Exception as exc:  # watchfiles raises OSError, RuntimeError... on faults
                    self._down(f"{type(exc).__name__}: {exc}")
                else:
                    if self._stop.is_set():
                        return
                    self._down(f"sessions folder {str(self._root)!r} was replaced or removed")
                    backoff = 1.0
            self._pending.request_rescan()  # whatever happened while we were not watching
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            self.restarts += 1

    def _watch(self, identity: tuple[int, int]) -> None:
        root = str(self._root)
        changes_seen = self.healthy.is_set()
        for changes in watchfiles.watch(
            self._root,
            watch_filter=None,
            debounce=DEBOUNCE_MS,
            step=STEP_MS,
            stop_event=_StopAsking(self._stop, lambda: self._watching(changes_seen)),
            rust_timeout=TICK_MS,
            yield_on_timeout=True,
            recursive=False,
            raise_interrupt=False,
            # True would also swallow "OS file watch limit reached" and leave us watching
            # nothing while healthy; raised, it puts the reconciler in poll mode instead.
            ignore_permission_denied=False,
        ):
            if changes:
                self.events += len(changes)
                if (watchfiles.Change.deleted, root) in changes:
                    # The folder itself was removed (a new one may reuse its inode, so the
                    # identity check below cannot see it): watch afresh. Other events on it
                    # (touch, chmod, rsync -a) are no reason to.
                    return
                job_ids = {job_id for _, path in changes if (job_id := job_id_for(os.path.basename(path))) is not None}
                if job_ids:
                    self._pending.add(job_ids)
            if _identity(self._root) != identity:
                return  # the folder was removed or replaced: watch the new one

    def _watching(self, changes_seen: bool) -> None:
        if self.healthy.is_set():
            return
        self.healthy.set()
        self.settled.set()
        if changes_seen or self.restarts:
            logger.warning("native watcher running again", extra={"folder": str(self._root)})
            self._pending.request_rescan()

    def _down(self, reason: str) -> None:
        if self.healthy.is_set() or self.restarts == 0:
            logger.error(
                "native watcher down; polling until it is back",
                extra={"folder": str(self._root), "reason": reason},
            )
        self.healthy.clear()
        self.settled.set()
