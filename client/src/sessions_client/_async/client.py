"""The client's I/O: httpx requests around the wire format and the state machines (the modules
wire, polling and reflector), which make every decision; this code only sends, reads and sleeps.
Written once, async: the sync client is generated from this file by client/scripts/unasync.py
(`make unasync`), which says how the two may differ."""

from __future__ import annotations

# sync: import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from types import TracebackType
from typing import Any

import httpx

from sessions_client.backoff import DEFAULT_RETRIES, Backoff, ReadRetries
from sessions_client.concurrency import AsyncStopping, async_sleep
from sessions_client.errors import ProtocolError, TransportError, problem_from, retry_after
from sessions_client.models import EventType, Filter, JobEvent, Page, Session, SessionList, WatchEvent
from sessions_client.polling import ETagCache, Waiting, assemble, conditional, read_answer, until_predicate
from sessions_client.reflector import CollectionReflector, E, JobReflector, StreamReflector, watch_filter
from sessions_client.wire import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_STREAM_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    JOBS,
    MAX_PAGE,
    STREAM_HEADERS,
    LineDecoder,
    check_limit,
    job_path,
    load_page,
    request_headers,
)


class AsyncSessionsClient:
    """A client of the job-session service. The sync client is safe to share between threads;
    the async one is created, and used, on one event loop.

    `timeout` bounds every request (a long poll gets its wait on top); `stream_timeout` is the
    longest silence a watch accepts before resuming elsewhere; `backoff` paces retries and
    resumes; `retries` is how many times `get` and each list page are tried again after a
    connection failure or a 429/502/503/504 (0: never); `cache_size` sessions keep their last
    version for `get`'s If-None-Match. Pass `http` to use an httpx.AsyncClient of your own
    (proxies, TLS, transports): it is not closed."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        stream_timeout: float = DEFAULT_STREAM_TIMEOUT_S,
        backoff: Backoff | None = None,
        retries: int = DEFAULT_RETRIES,
        cache_size: int = DEFAULT_CACHE_SIZE,
        headers: Mapping[str, str] | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.backoff = backoff or Backoff()
        self.timeout = timeout
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        self.retries = retries
        self._stream_timeout = httpx.Timeout(timeout, read=stream_timeout)
        self._headers = request_headers(token, headers)
        self._cache = ETagCache(cache_size)
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> AsyncSessionsClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    def __repr__(self) -> str:
        return f"AsyncSessionsClient({self.base_url!r})"

    # --- reads ---------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Session:
        """The session's current version. Sends the cached version's ETag as If-None-Match: a
        304 returns the cached version without a body. Raises NotFound, BadRequest,
        Unauthorized, Unavailable (503, with retry_after), TransportError."""
        path = job_path(job_id)
        cached = self._cache.get(job_id)
        response = await self._send(path, headers=conditional(cached))
        return read_answer(job_id, response.status_code, response.headers, response.content, cached, self._cache)

    def pages(
        self,
        *,
        status: str | Iterable[str] | None = None,
        user_id: str | None = None,
        include_saved: bool = True,
        limit: int = MAX_PAGE,
    ) -> AsyncIterator[Page]:
        """The list's pages one by one (newest `updated_at` first), following `Link: rel="next"`:
        for lists too large to hold at once."""
        return self._pages(Filter.of(status, user_id, include_saved), limit)

    async def _pages(self, filter: Filter, limit: int) -> AsyncIterator[Page]:
        query: str | dict[str, str] = {**filter.params(), "limit": check_limit(limit)}
        seen: set[str] = set()
        while True:
            response = await self._send(JOBS, params=query)
            if response.status_code != 200:
                raise problem_from(response.status_code, response.headers, response.content)
            page = load_page(response.headers, response.content)
            yield page
            if page.next_query is None:
                return
            if page.next_query in seen:  # keyset cursors only move on: never loop
                raise ProtocolError(f"a list page links back to {page.next_query!r}")
            seen.add(page.next_query)
            query = page.next_query

    async def list(
        self,
        *,
        status: str | Iterable[str] | None = None,
        user_id: str | None = None,
        include_saved: bool = True,
        limit: int = MAX_PAGE,
    ) -> SessionList:
        """Every matching summary, across pages. `revision` is set when the pages make one
        consistent state (see SessionList): `watch(since=...)` starts from it."""
        filter = Filter.of(status, user_id, include_saved)
        return assemble(filter, [page async for page in self._pages(filter, limit)])

    async def wait(
        self,
        job_id: str,
        until: str | Collection[str] | Callable[[Session], bool],
        *,
        timeout: float,
    ) -> Session:
        """Wait until the session's status is in `until` (or `until(session)` is true), by long
        polls: each waits on the server for the next version. Returns that version. Raises
        WaitTimeout after `timeout` seconds (its `session` is the last version seen), NotFound
        if the session does not exist, SessionDeleted if it is deleted meanwhile. Retries 503s
        and connection failures within the timeout."""
        path = job_path(job_id)
        waiting = Waiting(job_id, until_predicate(until), timeout, self.timeout, self.backoff, self._cache)
        while True:
            pause = waiting.pause()
            if pause > 0:
                await async_sleep(pause)  # a backoff, bounded by the deadline
            request = waiting.request()
            try:
                response = await self._http.get(
                    self.base_url + path, headers={**self._headers, **request.headers}, timeout=request.timeout
                )
            except httpx.TransportError:
                waiting.failed()
                continue
            session = waiting.answered(response.status_code, response.headers, response.content)
            if session is not None:
                return session

    # --- watches -------------------------------------------------------------------------------

    def watch(
        self,
        *,
        status: str | Iterable[str] | None = None,
        user_id: str | None = None,
        include_saved: bool = True,
        initial_events: bool = True,
        since: SessionList | None = None,
        bookmarks: bool = False,
        # sync: stop: threading.Event | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """The collection's changes, for ever (`stream` says how a watch stops). First an ADDED
        for every session that matches now (unless `initial_events=False`: changes from now
        on), or, with `since` (a list), what changed since that list. Resumes by itself after a
        dropped or ended stream; lists again on a 410 and sends the difference, so the events
        always add up to the service's state. With `bookmarks`, BOOKMARK events too (`synced`
        on the one after each initial state or relist)."""
        reflector = CollectionReflector(
            watch_filter(status, user_id, include_saved, since),
            self.backoff,
            initial_events=initial_events,
            since=since,
        )
        return self.stream(reflector, bookmarks=bookmarks)  # async only
        # sync: return self.stream(reflector, stop=stop, bookmarks=bookmarks)

    def watch_job(
        self,
        job_id: str,
        *,
        since: Session | None = None,
        bookmarks: bool = False,
        # sync: stop: threading.Event | None = None,
    ) -> AsyncIterator[JobEvent]:
        """One job's versions, for ever: ADDED (now, if it exists; else when it appears),
        MODIFIED for each new version, DELETED when it goes (the watch goes on). With `since`
        (a version you have, e.g. from `get`), starts after it. Resumes by ETag on any replica."""
        reflector = JobReflector(job_id, self.backoff, since=since)
        return self.stream(reflector, bookmarks=bookmarks)  # async only
        # sync: return self.stream(reflector, stop=stop, bookmarks=bookmarks)

    async def stream(
        self,
        reflector: StreamReflector[E],
        *,
        # sync: stop: threading.Event | None = None,
        bookmarks: bool = False,
    ) -> AsyncIterator[E]:
        """Run a reflector's streams (what `watch` and `watch_job` do): open, read, resume, back
        off, until the generator is closed; or, sync, `stop` is set (a `Stop` interrupts a
        blocking read at once); or, async, its task is cancelled."""
        stopping = AsyncStopping()  # async only
        # sync: stopping = Stopping(stop)
        delay = 0.0
        while not stopping.is_set():
            if delay > 0 and await stopping.wait(delay):
                return
            path, params, headers = reflector.target()
            error: BaseException | None = None
            try:
                async with self._http.stream(
                    "GET",
                    self.base_url + path,
                    params=params,
                    headers={**self._headers, **STREAM_HEADERS, **headers},
                    timeout=self._stream_timeout,
                ) as response:
                    if response.status_code != 200:
                        delay = reflector.refused(response.status_code, response.headers, await response.aread())
                        continue
                    reflector.opened()
                    with stopping.interrupting(response):
                        decoder = LineDecoder()
                        async for chunk in response.aiter_bytes():
                            for line in decoder.feed(chunk):
                                for event in reflector.receive(line):
                                    if bookmarks or event.type is not EventType.BOOKMARK:
                                        yield event
                            if reflector.broken or stopping.is_set():
                                break
                        else:
                            if decoder.pending:
                                error = ProtocolError("the stream ended in the middle of an event")
            except (httpx.TransportError, ProtocolError) as exc:
                error = exc
            if stopping.is_set():
                return
            delay = reflector.ended(error)

    # --- I/O -----------------------------------------------------------------------------------

    async def _send(self, path: str, params: Any = None, headers: Mapping[str, str] | None = None) -> httpx.Response:
        """GET `path`; a transport error or a status of READ_RETRY_STATUSES is tried again up to
        `retries` times (a GET has no effect to repeat), after the backoff and any Retry-After."""
        url, headers = self.base_url + path, {**self._headers, **(headers or {})}
        tries = ReadRetries(self.backoff, self.retries, self.timeout)
        while True:
            try:
                response = await self._http.get(url, params=params, headers=headers)
            except httpx.TransportError as exc:
                if (pause := tries.after_error()) is None:
                    raise TransportError(f"GET {path}: {exc!r}") from exc
            else:
                if (pause := tries.after_response(response.status_code, retry_after(response.headers))) is None:
                    return response
            await async_sleep(pause)
