"""A mirror's copy of a collection, shared by Mirror and AsyncMirror (whose I/O is in the
`_async` package, and generated from it in `_sync`): a dict the events are applied to, and
the callbacks each event calls."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sessions_client.models import EventType, Filter, Summary, WatchEvent

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


def callback_failed(call: Call) -> None:
    # A callback's bug must not stop the mirror, which would then drift from the service.
    logger.exception("mirror callback %s failed", getattr(call[0], "__qualname__", call[0]))
