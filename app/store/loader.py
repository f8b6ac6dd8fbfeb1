"""Loads evicted sessions off the event loop: one read per job id, however many requests wait."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

from app.store.sessionfile import Document
from app.store.store import SessionStore

T = TypeVar("T")


class MissLoader:
    """Loads evicted sessions in a thread pool, one read per job id however many wait."""

    def __init__(self, store: SessionStore, executor: Executor) -> None:
        self._store = store
        self._executor = executor
        self._in_flight: dict[str, asyncio.Future[Document]] = {}
        self.loads = 0

    async def load(self, job_id: str) -> Document:
        future = self._in_flight.get(job_id)
        if future is None:
            self.loads += 1
            future = asyncio.get_running_loop().run_in_executor(self._executor, self._store.load_missing, job_id)
            self._in_flight[job_id] = future
            future.add_done_callback(functools.partial(self._done, job_id))
        # shield: one waiter giving up (a client that disconnects) must not cancel the others'.
        return await asyncio.shield(future)

    async def run(self, work: Callable[[], T]) -> T:
        """Other blocking work of the request side, in the same bounded pool of threads."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def _done(self, job_id: str, future: asyncio.Future[Document]) -> None:
        self._in_flight.pop(job_id, None)
        if not future.cancelled():
            # Retrieved here, so that a failure whose only waiter disconnected is not logged
            # as "Future exception was never retrieved": the waiters that remain get it.
            future.exception()
