"""The LRU cache of full documents, bounded by entries and by bytes of documents.

Not thread-safe (no cachetools cache is, and an LRU read reorders it): `SessionStore` holds its
lock around every call, and nothing here reads files or parses.
"""

from __future__ import annotations

from cachetools import Cache, LRUCache

from app.store.sessionfile import Document


def _document_size(document: Document) -> int:
    return len(document.body)


class DocumentCache(LRUCache[str, Document]):
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=_document_size)
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def lookup(self, job_id: str) -> Document | None:
        """A read by a request: counts a hit or a miss and marks the entry recently used."""
        try:
            document = self[job_id]
        except KeyError:
            self.misses += 1
            return None
        self.hits += 1
        return document

    def peek(self, job_id: str) -> Document | None:
        """A read that is not a use: no counting, no reordering."""
        try:
            return Cache.__getitem__(self, job_id)
        except KeyError:
            return None

    def fits(self, document: Document) -> bool:
        """Whether the document can be added without evicting anything (warm-up fills, never churns)."""
        return len(self) < self.max_entries and self.currsize + document.size <= self.maxsize

    def put(self, document: Document) -> bool:
        """Add or replace, evicting least recently used documents as needed; False if it can
        never fit (a document larger than the whole byte bound, or a cache bound of zero)."""
        if self.max_entries == 0 or document.size > self.maxsize:
            self.pop(document.job_id, None)
            return False
        self[document.job_id] = document
        while len(self) > self.max_entries:
            self.popitem()
        return True

    def popitem(self) -> tuple[str, Document]:
        item = super().popitem()
        self.evictions += 1
        return item
