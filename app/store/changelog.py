"""Revisions and the change log: what a watch resumes from (docs/contract.md#revisions).

A revision names one process's history: `<boot id>.<counter>`, where the boot id is random per
process. A token from another replica, or from this replica before a restart, carries another
boot id and is recognised as expired instead of being misread as a position in this history.

The log is a ring of the last `capacity` changes: each names the job, its entry before and
after (what lists and filters need: summary, status, user, ETag), never whole documents. It is
appended to by the reconciler thread under the store's lock and read by the event loop under
the same lock, so it needs no lock of its own.
"""

from __future__ import annotations

import base64
import os
import re
from typing import NamedTuple

from app.errors import InvalidRevision
from app.store.entry import Entry

# docs/contract.md#revisions: at most 64 characters of A-Za-z0-9._-
REVISION_PATTERN = r"[A-Za-z0-9._-]{1,64}"
_REVISION = re.compile(REVISION_PATTERN)
_OURS = re.compile(r"([a-z2-7]{12})\.(\d{1,19})")


def new_boot_id() -> str:
    """12 characters of base32 (60 random bits): unique enough among a deployment's processes."""
    return base64.b32encode(os.urandom(10)).decode("ascii")[:12].lower()


class Expired(Exception):
    """A revision this process cannot resume from: another process's, or older than the log."""


class StoreChange(NamedTuple):
    """One change to what the store serves. `old` is None for an added session, `new` None for
    a deleted one; both set for a new version."""

    revision: int
    job_id: str
    old: Entry | None
    new: Entry | None
    changed_at: float  # wall-clock seconds: the file's modification time, or when a deletion was seen


class ChangeLog:
    """The last `capacity` changes, by revision. Not thread-safe: the store's lock guards it."""

    def __init__(self, capacity: int, boot_id: str | None = None) -> None:
        if capacity < 1:
            raise ValueError("a change log holds at least one change")
        self.boot_id = boot_id or new_boot_id()
        self._prefix = self.boot_id + "."
        self._capacity = capacity
        self._ring: list[StoreChange | None] = [None] * capacity
        # Every change after `start` up to `head` is held (while head - start <= capacity).
        self.start = 0
        self.head = 0

    def token(self, revision: int) -> str:
        return self._prefix + str(revision)

    def reset(self, revision: int) -> None:
        """Forget everything: the history begins at `revision` (the end of the warm-up)."""
        self._ring = [None] * self._capacity
        self.start = self.head = revision

    def append(self, change: StoreChange) -> None:
        if change.revision != self.head + 1:
            raise ValueError(f"revision {change.revision} does not follow {self.head}")
        self._ring[change.revision % self._capacity] = change
        self.head = change.revision
        if self.head - self.start > self._capacity:
            self.start = self.head - self._capacity

    def resumable(self, revision: int) -> bool:
        return self.start <= revision <= self.head

    def after(self, revision: int, limit: int | None = None) -> list[StoreChange]:
        """The changes after `revision`, oldest first (at most `limit`); Expired when some of
        them are no longer held."""
        if not self.resumable(revision):
            raise Expired(revision)
        end = self.head if limit is None else min(self.head, revision + limit)
        ring, capacity = self._ring, self._capacity
        changes = [ring[number % capacity] for number in range(revision + 1, end + 1)]
        return changes  # type: ignore[return-value]  # every slot in (start, head] is filled

    def parse(self, token: str) -> int:
        """The revision a token names in this history. InvalidRevision for what cannot be a
        revision at all; Expired for a revision of another history or one no longer held."""
        if not _REVISION.fullmatch(token):
            raise InvalidRevision(
                f"{token[:80]!r} is not a revision: 1 to 64 of A-Z a-z 0-9 . _ -, as the server gave it"
            )
        match = _OURS.fullmatch(token)
        if match is None or match.group(1) != self.boot_id:
            raise Expired(token)
        revision = int(match.group(2))
        if not self.resumable(revision):
            raise Expired(token)
        return revision
