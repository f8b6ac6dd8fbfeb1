"""The index of valid sessions: summaries kept in list order, with keyset pages.

Not thread-safe: `SessionStore` guards it with its lock. Every change costs O(log n) and a page
costs O(limit + number of groups merged), never O(number of sessions), so a list answers as fast
with 100,000 sessions as with 100: the order is maintained as files change, not sorted per request.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Collection, Iterable, Iterator
from itertools import islice
from typing import NamedTuple

from sortedcontainers import SortedList

from app.settings import FINISHED_STATUSES

# (-updated instant in ns, job id, summary JSON): ascending is newest first, then by job id. The
# first two are unique, so the JSON is never compared: it rides along so that a page is read
# straight off the sorted keys. A cursor is (instant, job id, AFTER): just past that session.
Key = tuple[int, str, bytes]
AFTER = b"\xff"  # sorts after any JSON text


class SessionFilter(NamedTuple):
    """The filters a list and a collection watch share. Hashable: watches are grouped by it."""

    statuses: frozenset[str] | None
    user_id: str | None
    include_saved: bool
    finished: frozenset[str] = FINISHED_STATUSES  # what include_saved=false leaves out (a setting)

    def matches(self, status: str | None, user_id: str | None) -> bool:
        """The index's rule: a status that is not a string matches no status filter."""
        return (
            (self.statuses is None or status in self.statuses)
            and (self.user_id is None or user_id == self.user_id)
            and (self.include_saved or status not in self.finished)
        )


class _Group:
    """A sorted set of keys: a plain list while small (most users have few sessions; a
    SortedList costs ~700 bytes even when it holds one key), a SortedList once it grows."""

    __slots__ = ("_keys",)
    _SMALL = 128

    def __init__(self) -> None:
        self._keys: list[Key] | SortedList = []

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def of(cls, keys: list[Key]) -> _Group:
        group = cls()
        keys.sort()
        group._keys = keys if len(keys) <= cls._SMALL else SortedList(keys)
        return group

    def add(self, key: Key) -> None:
        if isinstance(self._keys, list):
            insort(self._keys, key)
            if len(self._keys) > self._SMALL:
                self._keys = SortedList(self._keys)
        else:
            self._keys.add(key)

    def discard(self, key: Key) -> None:
        self._keys.remove(key)

    def after(self, key: Key | None) -> Iterator[Key]:
        if isinstance(self._keys, list):
            start = 0 if key is None else bisect_right(self._keys, key)
            return islice(self._keys, start, None)
        if key is None:
            return iter(self._keys)
        return self._keys.irange(minimum=key, inclusive=(False, True))  # type: ignore[no-any-return]


class _Facets:
    """One population of sessions (everyone's, or one user's) sorted three ways, so that each
    filter the API offers reads one group, or a few for a list of statuses."""

    __slots__ = ("all", "active", "by_status", "finished")

    def __init__(self, finished: frozenset[str]) -> None:
        self.finished = finished  # the statuses include_saved=false leaves out
        self.all = _Group()
        self.active = _Group()  # not finished: what include_saved=false lists
        self.by_status: dict[str | None, _Group] = {}

    def __len__(self) -> int:
        return len(self.all)

    def add(self, key: Key, status: str | None) -> None:
        self.all.add(key)
        if status not in self.finished:
            self.active.add(key)
        group = self.by_status.get(status)
        if group is None:
            group = self.by_status[status] = _Group()
        group.add(key)

    def remove(self, key: Key, status: str | None) -> None:
        self.all.discard(key)
        if status not in self.finished:
            self.active.discard(key)
        group = self.by_status[status]
        group.discard(key)
        if not group:
            del self.by_status[status]

    def groups(self, statuses: Collection[str] | None, include_saved: bool) -> list[_Group]:
        if statuses is None:
            return [self.all if include_saved else self.active]
        by_status = self.by_status
        return [
            by_status[status]
            for status in statuses
            if status in by_status and (include_saved or status not in self.finished)
        ]

    @classmethod
    def of(cls, items: list[tuple[Key, str | None]], finished: frozenset[str]) -> _Facets:
        facets = cls(finished)
        facets.all = _Group.of([key for key, _ in items])
        facets.active = _Group.of([key for key, status in items if status not in finished])
        by_status: dict[str | None, list[Key]] = {}
        for key, status in items:
            by_status.setdefault(status, []).append(key)
        facets.by_status = {status: _Group.of(keys) for status, keys in by_status.items()}
        return facets


class SessionIndex:
    """Keys of valid sessions in list order: everyone's, and each user's, in facets.
    `finished`: the statuses that include_saved=false leaves out (a setting)."""

    def __init__(self, finished: frozenset[str] = FINISHED_STATUSES) -> None:
        self.finished = finished
        self._everyone = _Facets(finished)
        self._by_user: dict[str | None, _Facets] = {}

    def __len__(self) -> int:
        return len(self._everyone)

    def add(self, key: Key, status: str | None, user_id: str | None) -> None:
        self._everyone.add(key, status)
        facets = self._by_user.get(user_id)
        if facets is None:
            facets = self._by_user[user_id] = _Facets(self.finished)
        facets.add(key, status)

    def remove(self, key: Key, status: str | None, user_id: str | None) -> None:
        self._everyone.remove(key, status)
        facets = self._by_user[user_id]
        facets.remove(key, status)
        if not facets:
            del self._by_user[user_id]

    @classmethod
    def build(
        cls, items: Iterable[tuple[Key, str | None, str | None]], finished: frozenset[str] = FINISHED_STATUSES
    ) -> SessionIndex:
        """An index of many items at once: a sort per group instead of an insert per item
        (what makes a 100,000-file warm-up cheap)."""
        index = cls(finished)
        everyone: list[tuple[Key, str | None]] = []
        by_user: dict[str | None, list[tuple[Key, str | None]]] = {}
        for key, status, user_id in items:
            everyone.append((key, status))
            by_user.setdefault(user_id, []).append((key, status))
        index._everyone = _Facets.of(everyone, finished)
        index._by_user = {user_id: _Facets.of(user_items, finished) for user_id, user_items in by_user.items()}
        return index

    def keys(self, *, statuses: Collection[str] | None, user_id: str | None, include_saved: bool) -> list[Key]:
        """Every matching key, in list order: O(matching), for a watch's initial state."""
        facets = self._everyone if user_id is None else self._by_user.get(user_id)
        if facets is None:
            return []
        groups = facets.groups(statuses, include_saved)
        if len(groups) == 1:
            return list(groups[0].after(None))
        keys = [key for group in groups for key in group.after(None)]
        keys.sort()
        return keys

    def page(
        self,
        *,
        statuses: Collection[str] | None,
        user_id: str | None,
        include_saved: bool,
        after: Key | None,
        limit: int,
    ) -> tuple[list[Key], int, bool]:
        """One page of keys in list order: (keys, total matching, more follow)."""
        facets = self._everyone if user_id is None else self._by_user.get(user_id)
        if facets is None:
            return [], 0, False
        groups = facets.groups(statuses, include_saved)
        total = sum(len(group) for group in groups)
        if len(groups) == 1:
            page = list(islice(groups[0].after(after), limit + 1))
        else:
            # The first limit+1 of each group, sorted together: a C sort of a few hundred keys
            # beats merging them one by one in Python.
            page = []
            for group in groups:
                page.extend(islice(group.after(after), limit + 1))
            page.sort()
            del page[limit + 1 :]
        return page[:limit], total, len(page) > limit
