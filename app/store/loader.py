"""Loads evicted sessions off the event loop: one read per job id, however many requests wait.

A file server that stops answering must not make requests hang or threads pile up: a request
waits for a load at most LOAD_TIMEOUT_S, then gets a 503 with Retry-After (the load goes on and
fills the cache when it can); past MAX_LOADS distinct loads in flight, a miss is a 503 at once.
The request side's other blocking work runs in a pool of its own, which hung reads cannot fill.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

from app.errors import TemporarilyUnavailable
from app.store.sessionfile import Document
from app.store.store import SessionStore

T = TypeVar("T")

LOAD_TIMEOUT_S = 5.0
MAX_LOADS = 256


class MissLoader:
    """Loads evicted sessions in a thread pool, one read per job id however many wait."""

    def __init__(
        self,
        store: SessionStore,
        executor: Executor,
        work_executor: Executor | None = None,
        timeout_s: float = LOAD_TIMEOUT_S,
    ) -> None:
        self._store = store
        self._executor = executor
        self._work_executor = work_executor if work_executor is not None else executor
        self._timeout_s = timeout_s
        self._in_flight: dict[str, asyncio.Future[Document]] = {}
        self.loads = 0
        self.timeouts = 0  # requests answered 503 because a load took too long or too many waited

    async def load(self, job_id: str) -> Document:
        future = self._in_flight.get(job_id)
        if future is None:
            if len(self._in_flight) >= MAX_LOADS:
                self.timeouts += 1
                raise TemporarilyUnavailable(
                    f"cannot load {job_id!r} now: {len(self._in_flight)} reads of the sessions folder are waiting"
                )
            self.loads += 1
            future = asyncio.get_running_loop().run_in_executor(self._executor, self._store.load_missing, job_id)
            self._in_flight[job_id] = future
            future.add_done_callback(functools.partial(self._done, job_id))
        # shield: one waiter giving up (a client that disconnects, a timeout) must not cancel
        # the others' or the read itself.
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._timeout_s)
        except TimeoutError:
            self.timeouts += 1
            raise TemporarilyUnavailable(
                f"the sessions folder did not answer within {self._timeout_s:g} s reading {job_id!r}"
            ) from None

    async def run(self, work: Callable[[], T]) -> T:
        """Other blocking work of the request side (never file reads), in its own pool."""
        return await asyncio.get_running_loop().run_in_executor(self._work_executor, work)

    def _done(self, job_id: str, future: asyncio.Future[Document]) -> None:
        self._in_flight.pop(job_id, None)
        if not future.cancelled():
            # Retrieved here, so that a failure whose only waiter disconnected is not logged
            # as "Future exception was never retrieved": the waiters that remain get it.
            future.exception()
