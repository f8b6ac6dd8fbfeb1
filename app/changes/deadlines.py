"""Many deadlines behind one event-loop timer: stream lifetimes and long-poll waits need no
timer each. Cancelled deadlines are dropped lazily, and the heap is compacted once they
outnumber the live ones (as asyncio does with its own timers)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

_COMPACT_AFTER = 64


class Deadline:
    __slots__ = ("when", "callback")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback


class Deadlines:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._cancelled = 0

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def add(self, when: float, callback: Callable[[], None]) -> Deadline:
        """Call `callback` on the loop at loop time `when` (unless cancelled first)."""
        deadline = Deadline(when, callback)
        heapq.heappush(self._heap, (when, next(self._order), deadline))
        if when < self._timer_at:
            self._arm(when)
        return deadline

    def cancel(self, deadline: Deadline) -> None:
        if deadline.callback is None:
            return
        deadline.callback = None
        self._cancelled += 1
        if self._cancelled > _COMPACT_AFTER and self._cancelled * 2 > len(self._heap):
            self._heap = [item for item in self._heap if item[2].callback is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._fire)
        self._timer_at = when

    def _fire(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        heap, now = self._heap, self._loop.time()
        while heap and heap[0][0] <= now:
            deadline = heapq.heappop(heap)[2]
            callback = deadline.callback
            if callback is None:
                self._cancelled -= 1
                continue
            deadline.callback = None
            callback()
        if heap:
            self._arm(heap[0][0])
