"""The job endpoints: plain ASGI callables that read only from memory.

A cache hit is a dictionary lookup, an ETag comparison and two `send` calls with headers
prepared when the file was loaded. A miss (an evicted session) is read off the event loop, once
however many requests wait for it.
"""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict
from concurrent.futures import Executor

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app import problems
from app.errors import InvalidJobId, ServiceError
from app.listing import next_link, parse_list_query
from app.sessionfile import Document, is_job_id
from app.store import SessionStore

_JOB_PREFIX = "/api/v2/jobs/"
_METHODS = ("GET", "HEAD")
_ALLOW = {"Allow": "GET, HEAD"}


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

    def _done(self, job_id: str, future: asyncio.Future[Document]) -> None:
        self._in_flight.pop(job_id, None)
        if not future.cancelled():
            # Retrieved here, so that a failure whose only waiter disconnected is not logged
            # as "Future exception was never retrieved": the waiters that remain get it.
            future.exception()


def _etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    if if_none_match == etag:
        return True
    for candidate in if_none_match.split(b","):
        candidate = candidate.strip()
        if candidate == b"*" or candidate.removeprefix(b"W/") == etag:
            return True
    return False


class JobEndpoint:
    """GET/HEAD /api/v2/jobs/{job_id}"""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method not in _METHODS:
            raise HTTPException(405, "use GET or HEAD", headers=_ALLOW)
        job_id: str = scope["path_params"]["job_id"]
        if not is_job_id(job_id):
            raise InvalidJobId(
                f"{job_id[:80]!r} is not a job id: 1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
            )
        state = scope["state"]
        document, stale = state["store"].lookup(job_id)
        if document is None:
            document = await state["loader"].load(job_id)
        if_none_match = None
        for name, value in scope["headers"]:
            if name == b"if-none-match":
                if_none_match = value
                break
        if if_none_match is not None and _etag_matches(if_none_match, document.etag):
            headers = document.stale_not_modified_headers() if stale else document.not_modified_headers
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": document.stale_headers() if stale else document.headers,
            }
        )
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else document.body})


class JobFastPath:
    """Sends GET /api/v2/jobs/{job_id} straight to its endpoint, around Starlette's exception
    middleware and router: with their per-request wrappers they cost a quarter of a cache hit
    (measured with wrk: 25.5k -> 29k requests/s). Errors become problem details through the same
    handlers the app registers; everything else goes on to Starlette. The route stays declared in
    the router, which documents it (OpenAPI) and would serve it without this."""

    def __init__(self, app: ASGIApp, endpoint: JobEndpoint) -> None:
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if not path.startswith(_JOB_PREFIX) or len(path) == len(_JOB_PREFIX):
            await self.app(scope, receive, send)
            return
        scope["path_params"] = {"job_id": path[len(_JOB_PREFIX) :]}
        try:
            await self.endpoint(scope, receive, send)
        except ServiceError as exc:
            response = await problems.service_error(Request(scope), exc)
            await response(scope, receive, send)
        except HTTPException as exc:
            response = await problems.http_error(Request(scope), exc)
            await response(scope, receive, send)


class JobListEndpoint:
    """GET/HEAD /api/v2/jobs

    A page depends only on the query and on the store's state, which the store revision names:
    the last pages rendered are kept by (query, revision), so clients polling the same page
    between changes cost a dictionary lookup. A change moves the revision on, and with it the key.
    """

    RENDERED_PAGES = 64

    def __init__(self) -> None:
        self._rendered: OrderedDict[tuple[int, int, str, bytes], tuple[list[tuple[bytes, bytes]], bytes]] = (
            OrderedDict()
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method not in _METHODS:
            raise HTTPException(405, "use GET or HEAD", headers=_ALLOW)
        store: SessionStore = scope["state"]["store"]
        key = (id(store), store.revision, scope["path"], scope["query_string"])
        rendered = self._rendered.get(key)
        if rendered is None:
            rendered = self._render(store, scope["path"], scope["query_string"])
            self._rendered[key] = rendered
            if len(self._rendered) > self.RENDERED_PAGES:
                self._rendered.popitem(last=False)
        headers, body = rendered
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    @staticmethod
    def _render(store: SessionStore, path: str, query_string: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
        query = parse_list_query(query_string)
        items, total, next_key, revision = store.page(
            statuses=query.statuses,
            user_id=query.user_id,
            include_saved=query.include_saved,
            after=query.after,
            limit=query.limit,
        )
        body = b"[" + b",".join(items) + b"]"
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"cache-control", b"no-cache"),
            (b"x-total-count", b"%d" % total),
            (b"x-revision", b"%d" % revision),
        ]
        if next_key is not None:
            headers.append((b"link", next_link(path, query, next_key)))
        return headers, body
