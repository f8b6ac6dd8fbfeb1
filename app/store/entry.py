"""What the store keeps of every valid session, cached or not: its own module, so that the
change log, which records entries before and after a change, need not import the store."""

from __future__ import annotations

from app.store.sessionfile import LoadedFile


class Entry:
    """A valid session (or the last valid version of one whose file is invalid now): what the
    index and lists need, kept for every session, cached or not. Kept small: one per file."""

    __slots__ = ("key", "status", "user_id", "signature", "etag")

    def __init__(self, loaded: LoadedFile) -> None:
        summary = loaded.summary
        self.key = summary.key  # its list position and list item: see app.store.index
        self.status = summary.status
        self.user_id = summary.user_id
        self.signature = loaded.signature
        # What "unchanged" is decided on, cached or not; the document's own bytes object, so
        # it costs nothing while the document is cached.
        self.etag = loaded.document.etag

    @property
    def summary(self) -> bytes:
        return self.key[2]
