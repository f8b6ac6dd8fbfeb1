"""The job endpoints: plain ASGI callables that read only from memory.

A cache hit is a dictionary lookup, an ETag comparison and two `send` calls with headers
prepared when the file was loaded. A miss (an evicted session) is read off the event loop, once
however many requests wait for it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import problems
from app.api.etags import etag_matches
from app.api.listing import next_link, parse_job_query, parse_list_query
from app.api.prefer import requested_wait
from app.api.routes import LABEL_KEY, ROUTES, match
from app.api.watches import long_poll, sse_refusal, watch_collection, watch_job
from app.errors import InvalidJobId, ServiceError, Warming
from app.store.sessionfile import is_job_id
from app.store.store import SessionStore

_METHODS = ("GET", "HEAD")
_ALLOW = {"Allow": "GET, HEAD"}


class JobEndpoint:
    """GET/HEAD /api/v2/jobs/{job_id}: the document; `?watch=true`, its change stream; with
    If-None-Match and `Prefer: wait=N`, the long poll (app.api.watches)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method not in _METHODS:
            raise HTTPException(405, "use GET or HEAD", headers=_ALLOW)
        job_id: str = scope["path_params"]["job_id"]
        if not is_job_id(job_id):
            raise InvalidJobId(
                f"{job_id[:80]!r} is not a job id: 1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
            )
        if scope["query_string"] and parse_job_query(scope["query_string"]):
            await watch_job(scope, receive, send, job_id)
            return
        if_none_match = wait = None
        for name, value in scope["headers"]:
            if name == b"if-none-match":
                if_none_match = value
            elif name == b"prefer":
                wait = requested_wait(value)
        state = scope["state"]
        document, stale = state["store"].lookup(job_id)
        if document is None:
            document = await state["loader"].load(job_id)
        if if_none_match is not None and etag_matches(if_none_match, document.etag):
            if wait is not None:
                await long_poll(scope, receive, send, document, stale, wait)
                return
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


class ApiFastPath:
    """Sends the route table's fast routes (a job, the list, and their watches) straight to their
    endpoints, around Starlette's exception middleware and router, whose per-request wrappers
    (and per-message wrappers of `send`, which a stream pays on every event) cost a large share
    of a cache hit (`python -m bench --only get` shows it). Errors become problem details
    through the one problem table; everything else goes on to Starlette. The routes stay
    declared in the router too, which would serve them without this."""

    def __init__(self, app: ASGIApp, endpoints: Mapping[str, ASGIApp]) -> None:
        self.app = app
        # The route table's fast routes, by endpoint name.
        self.endpoints = {spec.endpoint: endpoints[spec.endpoint] for spec in ROUTES if spec.fast}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        matched = match(scope["path"])
        if matched is None or not matched[0].fast:
            await self.app(scope, receive, send)
            return
        spec = matched[0]
        scope["path_params"] = matched[1]
        scope[LABEL_KEY] = spec.template  # known now: the observer need not match the path again
        endpoint = self.endpoints[spec.endpoint]
        try:
            if not scope["state"]["reconciler"].ready.is_set():
                # Not every session is loaded yet: a 404 or a short list now would be wrong.
                raise Warming("the service is warming up; try again shortly (readiness says when it is ready)")
            await endpoint(scope, receive, send)
        except ServiceError as exc:
            if await sse_refusal(scope, send, exc):
                return
            await problems.error_response(exc)(scope, receive, send)
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
        query_string: bytes = scope["query_string"]
        if b"watch" in query_string or b"%" in query_string:  # maybe a watch (%: w%61tch=...)
            query = parse_list_query(query_string)
            if query.watch:  # a stream: never through the rendered-page cache
                await watch_collection(scope, receive, send, query)
                return
        store: SessionStore = scope["state"]["store"]
        key = (id(store), store.revision, scope["path"], query_string)
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
            (b"x-revision", store.log.token(revision).encode("ascii")),
        ]
        if next_key is not None:
            headers.append((b"link", next_link(path, query, next_key)))
        return headers, body
