"""What the service serves, as typed values: sessions, list summaries, pages, lists and watch
events. All frozen: a value handed to a caller (or to a mirror's callback) never changes."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sessions_client.errors import ProtocolError

FINISHED_STATUSES = frozenset({"completed", "failed", "cancelled"})


class EventType(enum.StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"
    BOOKMARK = "BOOKMARK"  # a revision to resume from; yielded only when asked for


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Filter:
    """The filters a list and a collection watch share (docs/contract.md#http-api)."""

    statuses: frozenset[str] | None = None
    user_id: str | None = None
    include_saved: bool = True

    @classmethod
    def of(
        cls, status: str | Iterable[str] | None = None, user_id: str | None = None, include_saved: bool = True
    ) -> Filter:
        if isinstance(status, str):
            status = [status]
        statuses = (
            frozenset(part.strip() for value in status for part in value.split(",") if part.strip()) if status else None
        )
        if user_id == "":
            raise ValueError("user_id must not be empty: leave it out (None) for every user's sessions")
        return cls(statuses or None, user_id, include_saved)

    def params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.statuses:
            params["status"] = ",".join(sorted(self.statuses))
        if self.user_id is not None:
            params["user_id"] = self.user_id
        if not self.include_saved:
            params["include_saved"] = "false"
        return params

    def matches(self, summary: Summary) -> bool:
        """The service's rule: a status that is not a string matches no status filter."""
        status = summary.status
        return (
            (self.statuses is None or status in self.statuses)
            and (self.user_id is None or summary.user_id == self.user_id)
            and (self.include_saved or status not in FINISHED_STATUSES)
        )


@dataclass(frozen=True, slots=True)
class Summary:
    """A list item: what lists, filters and collection watches carry. The typed fields are None
    where the document has no such string; `data` is the item exactly as the service sent it."""

    job_id: str
    status: str | None
    user_id: str | None
    created_at: str | None
    updated_at: str | None
    data: Mapping[str, Any] = field(repr=False, hash=False)

    @classmethod
    def from_json(cls, item: object) -> Summary:
        if not isinstance(item, dict) or not isinstance(item.get("job_id"), str):
            raise ProtocolError(f"not a session summary: {str(item)[:200]}")
        return cls(
            item["job_id"],
            _text(item.get("status")),
            _text(item.get("user_id")),
            _text(item.get("created_at")),
            _text(item.get("updated_at")),
            item,
        )


@dataclass(frozen=True, slots=True)
class Session:
    """One version of a session's document, with its ETag. `stale`: the service serves its last
    valid version because the file is invalid now (X-Session-Stale)."""

    job_id: str
    etag: str
    document: Mapping[str, Any] = field(repr=False, hash=False)
    stale: bool = False

    @property
    def status(self) -> str | None:
        return _text(self.document.get("status"))

    @property
    def user_id(self) -> str | None:
        return _text(self.document.get("user_id"))

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES


@dataclass(frozen=True, slots=True)
class Page:
    """One list page: its items, the store revision it reflects, the number of sessions matching
    the filters, and the query of the next page (None on the last)."""

    items: tuple[Summary, ...]
    revision: str | None
    total: int | None
    next_query: str | None


@dataclass(frozen=True, slots=True)
class SessionList:
    """Every page of a list. `revision` is set only when the pages are one consistent state:
    every page reflected the same revision (a single page always does). Pages read while
    sessions changed are each right at their own revision, but together they are no state the
    service was ever in, so no watch can resume from them: `watch(since=...)` then starts with
    a fresh initial state and sends what differs from these items."""

    items: tuple[Summary, ...]
    revision: str | None
    total: int | None
    filter: Filter
    pages: int

    def __iter__(self) -> Iterator[Summary]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def by_id(self) -> dict[str, Summary]:
        return {item.job_id: item for item in self.items}


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change to the collection a watch follows, in the caller's terms: ADDED for a session it
    did not have, MODIFIED (with `old`, the version it had) or DELETED (a session deleted, or
    that stopped matching the filters: its last matching summary). BOOKMARK events (only when
    asked for) carry a revision and no object; `synced` marks the one that ends an initial state
    or a relist: the events before it make the full state at `revision`."""

    type: EventType
    revision: str
    object: Summary | None
    old: Summary | None = None
    synced: bool = False

    @property
    def job_id(self) -> str | None:
        return self.object.job_id if self.object is not None else None


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A change to one job: ADDED (it exists now), MODIFIED (a new version; `old` the previous),
    DELETED (`session` its last version). BOOKMARK events carry no session."""

    type: EventType
    job_id: str
    revision: str
    session: Session | None
    old: Session | None = None
