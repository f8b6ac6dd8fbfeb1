"""The session store: the index of every valid session, the LRU cache of documents, and what is
known of every session file, behind one lock.

Threads: the reconciler thread is the only writer of entries and the index; it takes the lock
for each change and may read its own state without it. Request handlers (the event loop) and
cache-miss loaders (a thread pool) take the lock to read and to fill the cache. The lock is held
only around dictionary and list operations, never while reading or parsing a file.
"""

from __future__ import annotations

import enum
import heapq
import threading
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

from app.errors import (
    InvalidSessionFile,
    SessionFileInvalid,
    SessionNotFound,
    TemporarilyUnavailable,
    TransientReadError,
)
from app.settings import FINISHED_STATUSES
from app.store import sessionfile
from app.store.cache import DocumentCache
from app.store.changelog import ChangeLog, StoreChange
from app.store.entry import Entry
from app.store.index import Key, SessionIndex
from app.store.sessionfile import Document, LoadedFile

MID_WRITE_RETRY_DELAYS_S = (0.01, 0.02, 0.04, 0.08)


class Change(enum.Enum):
    """What applying a file's state did, as counted in metrics. ADDED, MODIFIED and DELETED of a
    served session get a new revision; STALE and INVALID alter nothing served and get none."""

    NONE = "none"
    ADDED = "added"
    MODIFIED = "modified"
    STALE = "stale"  # a served session's file turned invalid: still served, marked stale
    INVALID = "invalid"  # a file that was never valid is (still) invalid
    DELETED = "deleted"


class Invalid:
    """A session file that is invalid now."""

    __slots__ = ("signature", "reason", "pinned", "loader_gave_up")

    def __init__(self, signature: int, reason: str, pinned: Document | None) -> None:
        self.signature = signature
        self.reason = reason
        self.pinned = pinned  # the last valid document, kept outside the LRU while stale
        # Without a pinned version, the loader reads the file again (a writer is likely
        # mid-write); once it has given up, requests get a 503 at once until the file changes.
        self.loader_gave_up = False


class SessionStore:
    def __init__(
        self,
        root: Path,
        *,
        cache_max_entries: int,
        cache_max_bytes: int,
        max_file_bytes: int,
        history: int = 100_000,
        finished_statuses: frozenset[str] = FINISHED_STATUSES,
    ) -> None:
        self.root = root
        self.max_file_bytes = max_file_bytes
        self.finished_statuses = finished_statuses  # what include_saved=false leaves out
        self._lock = threading.Lock()
        self._index = SessionIndex(finished_statuses)
        self._entries: dict[str, Entry] = {}
        self._invalid: dict[str, Invalid] = {}
        self._racy: set[str] = set()  # read so soon after a write that a rescan reads them again
        self._cache = DocumentCache(cache_max_entries, cache_max_bytes)
        self._warming: list[tuple[int, str]] | None = []  # heap of cached (instant, id) while warming
        # The revision of the last change to what is served (docs/contract.md#revisions), and the log of the last
        # `history` changes that watches resume from. Both change under the lock only.
        self.revision = 0
        self.log = ChangeLog(history)
        # Called (from any thread) with a job id whose file looks different from what the store
        # holds: the reconciler looks at it again.
        self.on_suspect: Callable[[str], None] = lambda job_id: None
        # On a network filesystem: read sizes and times past the client's attribute cache.
        self.forced_reads = False

    # --- reads, from any thread ---------------------------------------------------------------

    def lookup(self, job_id: str) -> tuple[Document | None, bool]:
        """The document to serve and whether it is stale; (None, False) on a cache miss."""
        with self._lock:
            entry = self._entries.get(job_id)
            invalid = self._invalid.get(job_id) if self._invalid else None
            if entry is not None and invalid is None:
                return self._cache.lookup(job_id), False
        if invalid is not None:
            if entry is None:
                raise SessionFileInvalid(f"the file for {job_id!r} is invalid: {invalid.reason}")
            if invalid.pinned is None:
                # The last valid version had been evicted before the file turned invalid. A
                # writer is most likely mid-write: let the loader read it again (with its
                # retries) rather than answer 503 for what is a millisecond-long state.
                if invalid.loader_gave_up:
                    raise TemporarilyUnavailable(
                        f"the file for {job_id!r} is invalid ({invalid.reason}) and its last valid "
                        "version is no longer in memory"
                    )
                return None, False
            return invalid.pinned, True
        if entry is None:
            raise SessionNotFound(f"no session {job_id!r}")
        return None, False

    def page(
        self,
        *,
        statuses: Collection[str] | None,
        user_id: str | None,
        include_saved: bool,
        after: Key | None,
        limit: int,
    ) -> tuple[list[bytes], int, Key | None, int]:
        """A list page: (summary JSON items, total matching, key of the last item if more follow,
        store revision the page reflects)."""
        with self._lock:
            keys, total, more = self._index.page(
                statuses=statuses, user_id=user_id, include_saved=include_saved, after=after, limit=limit
            )
            revision = self.revision
        return [key[2] for key in keys], total, (keys[-1] if more and keys else None), revision

    def snapshot(
        self, *, statuses: Collection[str] | None, user_id: str | None, include_saved: bool
    ) -> tuple[list[bytes], int]:
        """Every matching summary, in list order, and the revision they reflect: the initial
        state of a collection watch."""
        with self._lock:
            keys = self._index.keys(statuses=statuses, user_id=user_id, include_saved=include_saved)
            revision = self.revision
        return [key[2] for key in keys], revision

    def changes_after(self, revision: int, limit: int | None = None) -> list[StoreChange]:
        """The changes after `revision`, oldest first; `changelog.Expired` once they are no
        longer all held."""
        with self._lock:
            return self.log.after(revision, limit)

    def current_etag(self, job_id: str) -> bytes | None:
        """The ETag of the version a GET serves now (cached or not), None for no session."""
        entry = self._entries.get(job_id)
        return entry.etag if entry is not None else None

    def current_document(self, job_id: str) -> Document | None:
        """The document served now if it is in memory (cached, or pinned while stale), without
        counting a cache hit or making it recently used: for the change stream's fan-out."""
        with self._lock:
            if job_id not in self._entries:
                return None
            invalid = self._invalid.get(job_id) if self._invalid else None
            if invalid is not None:
                return invalid.pinned
            return self._cache.peek(job_id)

    def load_missing(self, job_id: str) -> Document:
        """Read an evicted session back into the cache. Blocking: call it off the event loop.

        A file caught mid-write (a writer rewriting it in place) is read again after each of
        MID_WRITE_RETRY_DELAYS_S before giving up: its last valid version is not in memory to
        serve instead."""
        for delay in (*MID_WRITE_RETRY_DELAYS_S, None):
            try:
                loaded = sessionfile.read(self.root, job_id, self.max_file_bytes, forced=self.forced_reads)
                break
            except FileNotFoundError:
                self.on_suspect(job_id)
                raise SessionNotFound(f"no session {job_id!r}") from None
            except InvalidSessionFile as exc:
                if delay is None:
                    with self._lock:
                        invalid = self._invalid.get(job_id)
                        if invalid is not None:
                            invalid.loader_gave_up = True
                    self.on_suspect(job_id)
                    raise TemporarilyUnavailable(
                        f"the file for {job_id!r} is being changed ({exc.reason}); try again"
                    ) from exc
                time.sleep(delay)
            except TransientReadError as exc:
                raise TemporarilyUnavailable(f"cannot read the file for {job_id!r} now: {exc}") from exc
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is not None and entry.signature == loaded.signature and job_id not in self._invalid:
                self._cache.put(loaded.document)
                return loaded.document
        # A newer version than the index knows: serve it, and let the reconciler apply it.
        self.on_suspect(job_id)
        return loaded.document

    def stats(self) -> dict[str, int]:
        with self._lock:
            cache = self._cache
            return {
                "sessions": len(self._entries),
                "invalid_files": len(self._invalid),
                "cache_entries": len(cache),
                "cache_bytes": int(cache.currsize),
                "cache_hits": cache.hits,
                "cache_misses": cache.misses,
                "cache_evictions": cache.evictions,
                "revision": self.revision,
                "history": self.log.head - self.log.start,
            }

    def session_count(self) -> int:
        return len(self._entries)

    # --- the reconciler thread's side ------------------------------------------------------------

    def signature(self, job_id: str) -> int | None:
        """The signature of the file version the store last applied, if any."""
        invalid = self._invalid.get(job_id)
        if invalid is not None:
            return invalid.signature
        entry = self._entries.get(job_id)
        return entry.signature if entry is not None else None

    def is_racy(self, job_id: str) -> bool:
        return job_id in self._racy

    def has_racy(self) -> bool:
        return bool(self._racy)

    def racy_ids(self) -> set[str]:
        return set(self._racy)

    def is_invalid(self, job_id: str) -> bool:
        return job_id in self._invalid

    def status(self, job_id: str) -> str | None:
        """The status of the valid version held (served, or pinned while stale), if any."""
        entry = self._entries.get(job_id)
        return entry.status if entry is not None else None

    def unsettled_ids(self) -> set[str]:
        """Sessions that may well change soon: unfinished ones (a status that is not finished,
        or none) and invalid files. (Racy files are looked at again while they are racy.)"""
        finished = self.finished_statuses
        unsettled = {job_id for job_id, entry in self._entries.items() if entry.status not in finished}
        return unsettled | self._invalid.keys()

    def job_ids(self) -> set[str]:
        return self._entries.keys() | self._invalid.keys()

    def _mark_racy(self, job_id: str, racy: bool) -> None:
        if racy:
            self._racy.add(job_id)
        else:
            self._racy.discard(job_id)

    def warm(self, batch: Iterable[LoadedFile]) -> None:
        """Add freshly scanned sessions at start-up. The cache keeps the newest sessions that
        fit; the index is built once at the end, by `finish_warm_up`."""
        heap = self._warming
        if heap is None:
            raise RuntimeError("the warm-up is over")
        cache = self._cache
        with self._lock:
            for loaded in batch:
                job_id = loaded.document.job_id
                self._entries[job_id] = Entry(loaded)
                self._invalid.pop(job_id, None)
                if loaded.racy:
                    self._racy.add(job_id)
                document, newest = loaded.document, (-loaded.summary.key[0], job_id)
                # Evict older sessions for a newer one; never a newer one for an older.
                while not cache.fits(document) and heap and heap[0] < newest and cache.max_entries:
                    cache.pop(heapq.heappop(heap)[1], None)
                if cache.fits(document):
                    cache.put(document)
                    heapq.heappush(heap, newest)

    def finish_warm_up(self) -> None:
        entries = list(self._entries.values())
        index = SessionIndex.build(
            ((entry.key, entry.status, entry.user_id) for entry in entries), self.finished_statuses
        )
        with self._lock:
            self._index = index
            self._warming = None
            # The lists change (from empty to everything): a new revision, where the history
            # of changes that watches can resume from begins.
            self.revision += 1
            self.log.reset(self.revision)

    def _record(self, job_id: str, old: Entry | None, new: Entry | None, changed_at: float) -> None:
        """The next revision, for a change to what is served. Call with the lock held."""
        self.revision += 1
        self.log.append(StoreChange(self.revision, job_id, old, new, changed_at))

    def apply_loaded(self, loaded: LoadedFile) -> Change:
        document, summary = loaded.document, loaded.summary
        job_id = document.job_id
        self._mark_racy(job_id, loaded.racy)
        entry = self._entries.get(job_id)
        invalid = self._invalid.get(job_id)
        if entry is not None and entry.etag == document.etag and entry.key == summary.key:
            # The same bytes (a touch, a rewrite with the same content, an evicted session read
            # again, a stale session whose file is back to its last valid version): nothing
            # served changes, so no revision, whether or not the document is cached.
            with self._lock:
                entry.signature = loaded.signature
                if invalid is not None:
                    del self._invalid[job_id]
                if self._cache.peek(job_id) is None:
                    self._cache.put(document)
            return Change.NONE
        with self._lock:
            if entry is not None:
                self._index.remove(entry.key, entry.status, entry.user_id)
            new = self._entries[job_id] = Entry(loaded)
            self._index.add(new.key, new.status, new.user_id)
            self._invalid.pop(job_id, None)
            self._cache.put(document)
            self._record(job_id, entry, new, loaded.version.mtime_ns / 1e9)
        return Change.MODIFIED if entry is not None else Change.ADDED

    def apply_invalid(self, job_id: str, signature: int, racy: bool, reason: str) -> Change:
        self._mark_racy(job_id, racy)
        invalid = self._invalid.get(job_id)
        if invalid is not None and invalid.signature == signature and invalid.reason == reason:
            return Change.NONE
        entry = self._entries.get(job_id)
        # No revision: a served session turning stale is still served (and listed) at its last
        # valid version, and a file that was never valid is not served at all.
        with self._lock:
            if invalid is not None:
                invalid.signature, invalid.reason = signature, reason
                invalid.loader_gave_up = False  # a new version: worth reading again
            else:
                # Keep serving the last valid version, pinned outside the LRU so that it cannot
                # be evicted while the file stays invalid.
                pinned = self._cache.pop(job_id, None) if entry is not None else None
                self._invalid[job_id] = Invalid(signature, reason, pinned)
        return Change.STALE if entry is not None else Change.INVALID

    def apply_deleted(self, job_id: str) -> Change:
        self._racy.discard(job_id)
        if job_id not in self._entries and job_id not in self._invalid:
            return Change.NONE
        with self._lock:
            entry = self._entries.pop(job_id, None)
            if entry is not None:
                self._index.remove(entry.key, entry.status, entry.user_id)
                self._record(job_id, entry, None, time.time())
            self._invalid.pop(job_id, None)
            self._cache.pop(job_id, None)
        return Change.DELETED
