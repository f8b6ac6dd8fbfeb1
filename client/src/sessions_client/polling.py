"""Reads and waits, without their I/O: the ETag cache `get` revalidates against, what a GET's
answer means, a list assembled from its pages, and `wait`'s loop of long polls (docs/contract.md#change-stream:
If-None-Match + `Prefer: wait=N`; 200 a new version, 404 deleted, 304 no change)."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping

from sessions_client.backoff import Backoff
from sessions_client.errors import (
    NotFound,
    ProtocolError,
    SessionDeleted,
    WaitTimeout,
    problem_from,
)
from sessions_client.models import Filter, Page, Session, SessionList, Summary
from sessions_client.reflector import RETRY_STATUSES, Clock
from sessions_client.wire import applied_wait, load_session

# A long poll is answered at the latest after SESSIONS_MAX_WAIT_S (300 s by default); asking for
# more costs nothing, as the server caps it and says so in Preference-Applied.
MAX_PREFER_WAIT_S = 3600


class ETagCache:
    """The last version read of up to `size` sessions (least recently used out first). A `get`
    sends its ETag as If-None-Match; a 304 answers with it. One lock: a sync client is shared
    by threads."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("cache_size must be 0 or more")
        self._size = size
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str) -> Session | None:
        with self._lock:
            session = self._sessions.get(job_id)
            if session is not None:
                self._sessions.move_to_end(job_id)
            return session

    def put(self, session: Session) -> None:
        if self._size == 0:
            return
        with self._lock:
            self._sessions[session.job_id] = session
            self._sessions.move_to_end(session.job_id)
            while len(self._sessions) > self._size:
                self._sessions.popitem(last=False)

    def drop(self, job_id: str) -> None:
        with self._lock:
            self._sessions.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._sessions)


def conditional(cached: Session | None) -> dict[str, str]:
    return {"If-None-Match": cached.etag} if cached is not None else {}


def read_answer(
    job_id: str, status: int, headers: Mapping[str, str], body: bytes, cached: Session | None, cache: ETagCache
) -> Session:
    """A GET's answer as a session (a 304: the cached version), kept in the cache; or the
    problem, raised (a 404 drops the cached version)."""
    if status == 200:
        session = load_session(job_id, headers, body)
    elif status == 304:
        if cached is None:
            raise ProtocolError(f"a 304 for {job_id} without a version to compare")
        stale = headers.get("x-session-stale") == "true"
        session = cached if cached.stale == stale else dataclasses.replace(cached, stale=stale)
    else:
        if status == 404:
            cache.drop(job_id)
        raise problem_from(status, headers, body)
    cache.put(session)
    return session


def assemble(filter: Filter, pages: Iterable[Page]) -> SessionList:
    """Every page's items in order (a session met twice, having moved while the pages were
    read, is kept at its last place). The list has a revision only when every page had the
    same one: then no change happened in between and the pages are one state."""
    items: dict[str, Summary] = {}
    revisions: set[str | None] = set()
    total: int | None = None
    count = 0
    for page in pages:
        if count == 0:
            total = page.total
        count += 1
        revisions.add(page.revision)
        for item in page.items:
            items.pop(item.job_id, None)
            items[item.job_id] = item
    revision = next(iter(revisions)) if len(revisions) == 1 else None
    return SessionList(tuple(items.values()), revision, total, filter, count)


def until_predicate(until: str | Collection[str] | Callable[[Session], bool]) -> Callable[[Session], bool]:
    if callable(until):
        return until
    statuses = frozenset([until] if isinstance(until, str) else until)
    if not statuses:
        raise ValueError("until= needs at least one status (or a predicate)")
    return lambda session: session.status in statuses


@dataclasses.dataclass(frozen=True, slots=True)
class PollRequest:
    headers: dict[str, str]
    timeout: float  # the HTTP timeout of this request: past the wait, never past the deadline


class Waiting:
    """`wait`'s loop: a GET (conditional when the cache has a version), then long polls from the
    version it has, until that version satisfies `until` or the deadline passes. Retries a
    503 (after Retry-After), a 5xx and a connection failure, within the deadline. A 304 that
    comes back long before the wait applied (a replica draining, a proxy that drops `Prefer`)
    counts as a failure: the next poll waits a backoff first, so the loop never spins."""

    def __init__(
        self,
        job_id: str,
        until: Callable[[Session], bool],
        timeout: float,
        request_timeout: float,
        backoff: Backoff,
        cache: ETagCache,
        clock: Clock = time.monotonic,
    ) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be more than 0 seconds")
        self.job_id = job_id
        self.until = until
        self.deadline = clock() + timeout
        self.session: Session | None = None  # the version this wait has seen last
        self.polls = 0
        self._timeout = timeout
        self._request_timeout = request_timeout
        self._backoff = backoff
        self._cache = cache
        self._clock = clock
        self._failures = 0
        self._pause = 0.0
        self._sent: Session | None = None
        self._asked: float | None = None  # the wait asked for by the request in flight
        self._sent_at = 0.0

    def pause(self) -> float:
        """Seconds to wait before the next request (a backoff), never past the deadline."""
        pause, self._pause = self._pause, 0.0
        return max(0.0, min(pause, self.deadline - self._clock()))

    def request(self) -> PollRequest:
        remaining = self.deadline - self._clock()
        if remaining <= 0:
            status = self.session.status if self.session is not None else None
            raise WaitTimeout(
                f"{self.job_id}: still waiting after {self._timeout:g} s (status {status!r})", self.session
            )
        self._sent_at = self._clock()
        if self.session is None:
            self._sent = self._cache.get(self.job_id)
            self._asked = None
            return PollRequest(conditional(self._sent), min(self._request_timeout, remaining))
        self._sent = self.session
        wait = max(1, min(MAX_PREFER_WAIT_S, math.ceil(remaining)))
        self._asked = wait
        self.polls += 1
        headers = {"If-None-Match": self.session.etag, "Prefer": f"wait={wait}"}
        # The server answers after the wait (or sooner); the deadline comes first when nearer.
        return PollRequest(headers, min(wait + self._request_timeout, remaining))

    def answered(self, status: int, headers: Mapping[str, str], body: bytes) -> Session | None:
        """The session once it satisfies `until`; None to poll again. Raises NotFound for a
        session that does not exist, SessionDeleted for one deleted while waited for."""
        if status in RETRY_STATUSES:
            self._failed(problem_from(status, headers, body).retry_after)
            return None
        had = self.session
        try:
            session = read_answer(self.job_id, status, headers, body, self._sent, self._cache)
        except NotFound as exc:
            if had is None:
                raise
            raise SessionDeleted(exc.status, exc.title, exc.detail or f"{self.job_id} was deleted", exc.type) from exc
        self.session = session
        if self.until(session):
            return session
        if status == 304 and self._asked is not None:
            applied = applied_wait(headers)
            if applied is None or self._clock() - self._sent_at < min(applied, self._asked) / 2:
                self._failed(None)  # answered without waiting: do not ask again at once
                return None
        self._failures = 0
        return None

    def failed(self) -> None:
        """The request got no answer (refused, reset, timed out)."""
        self._failed(None)

    def _failed(self, retry_after: float | None) -> None:
        self._failures += 1
        self._pause = self._backoff.delay(self._failures, retry_after)
