"""The index of valid sessions: summaries kept in list order, with keyset pages.

Not thread-safe: `SessionStore` guards it with its lock. Every change costs O(log n) and a page
costs O(limit + number of groups merged), never O(number of sessions), so a list answers as fast
with 100,000 sessions as with 100: the order is maintained as files change, not sorted per request.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right, insort
from collections.abc import Collection, Iterable, Iterator
from itertools import islice

from sortedcontainers import SortedList

from app.sessionfile import FINISHED_STATUSES

# (-updated instant in ns, job id, summary JSON): ascending is newest first, then by job id. The
# first two are unique, so the JSON is never compared: it rides along so that a page is read
# straight off the sorted keys. A cursor is (instant, job id, AFTER): just past that session.
Key = tuple[int, str, bytes]
AFTER = b"\xff"  # sorts after any JSON text


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


class SessionIndex:
    """Keys of valid sessions in list order: all of them, by status, and by user and status."""

    def __init__(self) -> None:
        self._all = _Group()
        self._by_status: dict[str | None, _Group] = {}
        self._by_user: dict[str | None, dict[str | None, _Group]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def add(self, key: Key, status: str | None, user_id: str | None) -> None:
        self._all.add(key)
        _group(self._by_status, status).add(key)
        _group(self._by_user.setdefault(user_id, {}), status).add(key)

    def remove(self, key: Key, status: str | None, user_id: str | None) -> None:
        self._all.discard(key)
        _discard(self._by_status, status, key)
        per_user = self._by_user[user_id]
        _discard(per_user, status, key)
        if not per_user:
            del self._by_user[user_id]

    @classmethod
    def build(cls, items: Iterable[tuple[Key, str | None, str | None]]) -> SessionIndex:
        """An index of many items at once: one sort per group instead of an insert per item
        (what makes a 100,000-file warm-up cheap)."""
        index = cls()
        by_status: dict[str | None, list[Key]] = {}
        by_user: dict[tuple[str | None, str | None], list[Key]] = {}
        everything: list[Key] = []
        for key, status, user_id in items:
            everything.append(key)
            by_status.setdefault(status, []).append(key)
            by_user.setdefault((user_id, status), []).append(key)
        index._all = _Group.of(everything)
        index._by_status = {status: _Group.of(keys) for status, keys in by_status.items()}
        for (user_id, status), keys in by_user.items():
            index._by_user.setdefault(user_id, {})[status] = _Group.of(keys)
        return index

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
        groups = self._groups(statuses, user_id, include_saved)
        total = sum(len(group) for group in groups)
        if len(groups) == 1:
            keys: Iterator[Key] = groups[0].after(after)
        else:
            keys = heapq.merge(*(group.after(after) for group in groups))
        page = list(islice(keys, limit + 1))
        return page[:limit], total, len(page) > limit

    def _groups(self, statuses: Collection[str] | None, user_id: str | None, include_saved: bool) -> list[_Group]:
        if user_id is None and statuses is None and include_saved:
            return [self._all]
        by_status = self._by_status if user_id is None else self._by_user.get(user_id, {})
        if statuses is None:
            wanted: Collection[str | None] = by_status.keys()
        else:
            wanted = [status for status in statuses if status in by_status]
        return [by_status[status] for status in wanted if include_saved or status not in FINISHED_STATUSES]


def _group(groups: dict[str | None, _Group], name: str | None) -> _Group:
    group = groups.get(name)
    if group is None:
        group = groups[name] = _Group()
    return group


def _discard(groups: dict[str | None, _Group], name: str | None, key: Key) -> None:
    group = groups[name]
    group.discard(key)
    if not group:
        del groups[name]
