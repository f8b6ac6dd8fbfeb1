"""The session store: the index of every valid session, the LRU cache of documents, and the
state of every session file seen, behind one lock.

Threads: the reconciler thread is the only writer of `_files` and the index; it takes the lock
for each change and may read its own state without it. Request handlers (the event loop) and
cache-miss loaders (a thread pool) take the lock to read and to fill the cache. The lock is held
only around dictionary and list operations, never while reading or parsing a file.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Collection
from pathlib import Path

from app import sessionfile
from app.cache import DocumentCache
from app.errors import (
    InvalidSessionFile,
    SessionFileInvalid,
    SessionNotFound,
    TemporarilyUnavailable,
    TransientReadError,
)
from app.index import Key, SessionIndex
from app.sessionfile import Document, LoadedFile, Summary


class Change(enum.Enum):
    """What applying a file's state did; every value but NONE got a new revision."""

    NONE = "none"
    ADDED = "added"
    MODIFIED = "modified"
    STALE = "stale"  # a served session's file turned invalid: still served, marked stale
    INVALID = "invalid"  # a file that was never valid changed and is still invalid
    DELETED = "deleted"


class FileState:
    """What the store knows of one `<job_id>.json` file."""

    __slots__ = ("signature", "racy", "summary", "reason", "pinned", "revision")

    def __init__(self, signature: int, racy: bool, revision: int) -> None:
        self.signature = signature
        self.racy = racy  # modified close to when it was read: the rescan reads it again
        self.summary: Summary | None = None  # the last valid version's summary
        self.reason: str | None = None  # why the current file is invalid, if it is
        self.pinned: Document | None = None  # the last valid document, kept while stale
        self.revision = revision  # the store revision of the last change to this session


class SessionStore:
    def __init__(self, root: Path, *, cache_max_entries: int, cache_max_bytes: int, max_file_bytes: int) -> None:
        self.root = root
        self.max_file_bytes = max_file_bytes
        self._lock = threading.Lock()
        self._index = SessionIndex()
        self._files: dict[str, FileState] = {}
        self._cache = DocumentCache(cache_max_entries, cache_max_bytes)
        self._invalid = 0
        # Monotonic over every change applied: the base of a future change stream (SPEC §6).
        self.revision = 0
        # Called (from any thread) with a job id whose file looks different from what the store
        # holds: the reconciler looks at it again.
        self.on_suspect: Callable[[str], None] = lambda job_id: None

    # --- reads, from any thread ---------------------------------------------------------------

    def lookup(self, job_id: str) -> tuple[Document | None, bool]:
        """The document to serve and whether it is stale; (None, False) on a cache miss."""
        with self._lock:
            state = self._files.get(job_id)
            if state is None:
                raise SessionNotFound(f"no session {job_id!r}")
            if state.summary is None:
                raise SessionFileInvalid(f"the file for {job_id!r} is invalid: {state.reason}")
            if state.reason is not None:
                if state.pinned is None:
                    raise TemporarilyUnavailable(
                        f"the file for {job_id!r} is invalid ({state.reason}) and its last valid "
                        "version is no longer in memory"
                    )
                return state.pinned, True
            return self._cache.lookup(job_id), False

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
            summaries, total, more = self._index.page(
                statuses=statuses, user_id=user_id, include_saved=include_saved, after=after, limit=limit
            )
            revision = self.revision
        next_key = summaries[-1].key if more and summaries else None
        return [summary.json for summary in summaries], total, next_key, revision

    def load_missing(self, job_id: str) -> Document:
        """Read an evicted session back into the cache. Blocking: call it off the event loop."""
        try:
            loaded = sessionfile.read(self.root, job_id, self.max_file_bytes)
        except FileNotFoundError:
            self.on_suspect(job_id)
            raise SessionNotFound(f"no session {job_id!r}") from None
        except InvalidSessionFile as exc:
            # The file changed after it was indexed and is invalid now (most likely mid-write).
            self.on_suspect(job_id)
            raise TemporarilyUnavailable(f"the file for {job_id!r} is being changed ({exc.reason}); try again") from exc
        except TransientReadError as exc:
            raise TemporarilyUnavailable(f"cannot read the file for {job_id!r} now: {exc}") from exc
        with self._lock:
            state = self._files.get(job_id)
            if state is not None and state.reason is None and state.signature == loaded.signature:
                self._cache.put(loaded.document)
                return loaded.document
        # A newer version than the index knows: serve it, and let the reconciler apply it.
        self.on_suspect(job_id)
        return loaded.document

    def stats(self) -> dict[str, int]:
        with self._lock:
            cache = self._cache
            return {
                "sessions": len(self._index),
                "invalid_files": self._invalid,
                "cache_entries": len(cache),
                "cache_bytes": int(cache.currsize),
                "cache_hits": cache.hits,
                "cache_misses": cache.misses,
                "cache_evictions": cache.evictions,
                "revision": self.revision,
            }

    def session_count(self) -> int:
        return len(self._index)

    # --- the reconciler thread's side ------------------------------------------------------------

    def state(self, job_id: str) -> FileState | None:
        return self._files.get(job_id)

    def job_ids(self) -> set[str]:
        return set(self._files)

    def apply_loaded(self, loaded: LoadedFile, *, warming: bool = False) -> Change:
        document, summary = loaded.document, loaded.summary
        job_id = document.job_id
        state = self._files.get(job_id)
        if (
            state is not None
            and state.reason is None
            and state.summary is not None
            and state.summary.etag == summary.etag
            and state.summary.key == summary.key
        ):
            state.signature, state.racy = loaded.signature, loaded.racy  # touched, not changed
            return Change.NONE
        with self._lock:
            self._index.put(summary)
            self.revision += 1
            if state is None:
                state = self._files[job_id] = FileState(loaded.signature, loaded.racy, self.revision)
                change = Change.ADDED
            else:
                change = Change.ADDED if state.summary is None else Change.MODIFIED
                if state.reason is not None:
                    self._invalid -= 1
                state.signature, state.racy, state.revision = loaded.signature, loaded.racy, self.revision
            state.summary, state.reason, state.pinned = summary, None, None
            if not warming or self._cache.fits(document):
                self._cache.put(document)
        return change

    def apply_invalid(self, job_id: str, signature: int, racy: bool, reason: str) -> Change:
        state = self._files.get(job_id)
        if state is not None and state.signature == signature and state.reason == reason:
            state.racy = racy
            return Change.NONE
        with self._lock:
            self.revision += 1
            if state is None:
                state = self._files[job_id] = FileState(signature, racy, self.revision)
                self._invalid += 1
            else:
                if state.reason is None:
                    self._invalid += 1
                    if state.summary is not None:
                        # Keep serving the last valid version, outside the LRU so it cannot be
                        # evicted while the file stays invalid.
                        state.pinned = self._cache.pop(job_id, None)
                state.signature, state.racy, state.revision = signature, racy, self.revision
            state.reason = reason
        return Change.STALE if state.summary is not None else Change.INVALID

    def apply_deleted(self, job_id: str) -> Change:
        if job_id not in self._files:
            return Change.NONE
        with self._lock:
            state = self._files.pop(job_id)
            self._index.discard(job_id)
            self._cache.pop(job_id, None)
            if state.reason is not None:
                self._invalid -= 1
            self.revision += 1
        return Change.DELETED
