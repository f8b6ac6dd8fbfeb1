"""The index of valid sessions: summaries kept in list order, with keyset pages.

Not thread-safe: `SessionStore` guards it with its lock. Every change costs O(log n) and a page
costs O(limit + number of groups merged), never O(number of sessions), so a list answers as fast
with 100,000 sessions as with 100: the order is maintained as files change, not sorted per request.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right, insort
from collections.abc import Collection, Iterator
from itertools import islice

from sortedcontainers import SortedList

from app.sessionfile import FINISHED_STATUSES, Summary

Key = tuple[int, str]  # (-updated instant in ns, job id): ascending is newest first


class _Group:
    """A sorted set of keys: a plain list while small (most users have few sessions; a
    SortedList costs ~700 bytes even when it holds one key), a SortedList once it grows."""

    __slots__ = ("_keys",)
    _SMALL = 128

    def __init__(self) -> None:
        self._keys: list[Key] | SortedList = []

    def __len__(self) -> int:
        return len(self._keys)

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
    def __init__(self) -> None:
        self._summaries: dict[str, Summary] = {}
        self._all = _Group()
        self._by_status: dict[str | None, _Group] = {}
        self._by_user: dict[str | None, dict[str | None, _Group]] = {}

    def __len__(self) -> int:
        return len(self._summaries)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._summaries

    def get(self, job_id: str) -> Summary | None:
        return self._summaries.get(job_id)

    def put(self, summary: Summary) -> None:
        self.discard(summary.job_id)
        self._summaries[summary.job_id] = summary
        self._all.add(summary.key)
        _group(self._by_status, summary.status).add(summary.key)
        _group(self._by_user.setdefault(summary.user_id, {}), summary.status).add(summary.key)

    def discard(self, job_id: str) -> None:
        summary = self._summaries.pop(job_id, None)
        if summary is None:
            return
        self._all.discard(summary.key)
        _discard(self._by_status, summary.status, summary.key)
        per_user = self._by_user[summary.user_id]
        _discard(per_user, summary.status, summary.key)
        if not per_user:
            del self._by_user[summary.user_id]

    def page(
        self,
        *,
        statuses: Collection[str] | None,
        user_id: str | None,
        include_saved: bool,
        after: Key | None,
        limit: int,
    ) -> tuple[list[Summary], int, bool]:
        """One page of summaries in list order: (summaries, total matching, more follow)."""
        groups = self._groups(statuses, user_id, include_saved)
        total = sum(len(group) for group in groups)
        if len(groups) == 1:
            keys: Iterator[Key] = groups[0].after(after)
        else:
            keys = heapq.merge(*(group.after(after) for group in groups))
        page = list(islice(keys, limit + 1))
        summaries = self._summaries
        return [summaries[key[1]] for key in page[:limit]], total, len(page) > limit

    def _groups(self, statuses: Collection[str] | None, user_id: str | None, include_saved: bool) -> list[_Group]:
        if user_id is None and statuses is None and include_saved:
            return [self._all]
        by_status: dict[str | None, _Group] = self._by_status if user_id is None else self._by_user.get(user_id, {})
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
