"""The async client: httpx.AsyncClient I/O around the same wire format and state machines as
the sync client (sessions_client.client). Only the awaiting differs; every decision is shared.
A watch stops when its task is cancelled or its generator closed (contextlib.aclosing)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from types import TracebackType
from typing import Any

import httpx

from sessions_client.backoff import DEFAULT_RETRIES, Backoff, ReadRetries
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
    """The async twin of SessionsClient: the same arguments, methods and behaviour, awaited.
    Create it, and use it, on one event loop."""

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
        """See SessionsClient.get."""
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
        """See SessionsClient.pages."""
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
            if page.next_query in seen:
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
        """See SessionsClient.list."""
        filter = Filter.of(status, user_id, include_saved)
        return assemble(filter, [page async for page in self._pages(filter, limit)])

    async def wait(
        self,
        job_id: str,
        until: str | Collection[str] | Callable[[Session], bool],
        *,
        timeout: float,
    ) -> Session:
        """See SessionsClient.wait."""
        path = job_path(job_id)
        waiting = Waiting(job_id, until_predicate(until), timeout, self.timeout, self.backoff, self._cache)
        while True:
            pause = waiting.pause()
            if pause > 0:
                await asyncio.sleep(pause)
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
    ) -> AsyncIterator[WatchEvent]:
        """See SessionsClient.watch."""
        reflector = CollectionReflector(
            watch_filter(status, user_id, include_saved, since),
            self.backoff,
            initial_events=initial_events,
            since=since,
        )
        return self.stream(reflector, bookmarks=bookmarks)

    def watch_job(
        self, job_id: str, *, since: Session | None = None, bookmarks: bool = False
    ) -> AsyncIterator[JobEvent]:
        """See SessionsClient.watch_job."""
        return self.stream(JobReflector(job_id, self.backoff, since=since), bookmarks=bookmarks)

    async def stream(self, reflector: StreamReflector[E], *, bookmarks: bool = False) -> AsyncIterator[E]:
        """See SessionsClient.stream; stopped by cancelling the task or closing the generator."""
        delay = 0.0
        while True:
            if delay > 0:
                await asyncio.sleep(delay)
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
                    decoder = LineDecoder()
                    async for chunk in response.aiter_bytes():
                        for line in decoder.feed(chunk):
                            for event in reflector.receive(line):
                                if bookmarks or event.type is not EventType.BOOKMARK:
                                    yield event
                        if reflector.broken:
                            break
                    else:
                        if decoder.pending:
                            error = ProtocolError("the stream ended in the middle of an event")
            except (httpx.TransportError, ProtocolError) as exc:
                error = exc
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
            await asyncio.sleep(pause)
