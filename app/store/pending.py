"""Job ids waiting to be looked at again: deduplicated, bounded, and waitable."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable


class PendingChanges:
    """A set of job ids plus a "rescan everything" flag, shared by the watcher (producer) and
    the reconciler (consumer).

    A burst of events for the same file collapses into one entry. Past `limit` distinct ids the
    set is dropped in favour of one full rescan, so a flood of 100,000 events costs bounded
    memory and one directory scan rather than an unbounded queue.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._ready = threading.Condition(threading.Lock())
        self._ids: set[str] = set()
        self._rescan = False
        self._woken = False
        self.overflows = 0

    def add(self, job_ids: Iterable[str]) -> None:
        with self._ready:
            if not self._rescan:
                self._ids.update(job_ids)
                if len(self._ids) > self._limit:
                    self._ids.clear()
                    self._rescan = True
                    self.overflows += 1
            if self._ids or self._rescan:
                self._ready.notify()

    def request_rescan(self) -> None:
        with self._ready:
            self._rescan = True
            self._ids.clear()
            self._ready.notify()

    def wake(self) -> None:
        """Make a waiting `take` return now (used to stop)."""
        with self._ready:
            self._woken = True
            self._ready.notify()

    def nudge(self) -> None:
        """Make a waiting `take_ids` look at its `until` again."""
        with self._ready:
            self._ready.notify_all()

    def take_ids(self, until: Callable[[], bool], timeout: float) -> set[str]:
        """Wait up to `timeout` seconds for job ids, or until `until()` holds (looked at again
        on every `nudge`), and take the ids only: a rescan requested is left for `take`."""
        with self._ready:
            self._ready.wait_for(lambda: bool(self._ids) or until(), timeout)
            ids, self._ids = self._ids, set()
            return ids

    def take(self, timeout: float | None) -> tuple[set[str], bool]:
        """Wait up to `timeout` seconds for work; return the ids and whether to rescan."""
        with self._ready:
            if not (self._ids or self._rescan or self._woken):
                self._ready.wait(timeout)
            ids, rescan = self._ids, self._rescan
            self._ids, self._rescan, self._woken = set(), False, False
            return ids, rescan
