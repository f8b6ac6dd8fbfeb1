"""Plain ASGI middleware (never BaseHTTPMiddleware): request observation and bearer-token auth."""

from __future__ import annotations

import functools
import hmac
import random
import re
import time
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.cors import PREFLIGHT_HEADER, CorsPolicy
from app.api.problems import error_response
from app.api.routes import API_PREFIX, CLIENT_GONE, CLIENT_GONE_KEY, route_label
from app.errors import Unauthorized
from app.ops.logs import access_log
from app.ops.metrics import Metrics

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


class RequestObserver:
    """Gives every request an id (the caller's X-Request-ID when it sends a sane one), echoes
    it, counts and times the request by route template and status, and writes the access log.
    With a CORS policy, it also answers preflights and adds the CORS headers to every response
    (app.api.cors says why here)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, cors: CorsPolicy | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.cors = cors
        # Logging is configured before the app is built; deciding once saves a lookup a request.
        self.access_log = access_log()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = None
        app: ASGIApp = self.app
        cors = self.cors
        extra: tuple[tuple[bytes, bytes], ...] = ()
        if cors is None:
            for name, value in scope["headers"]:
                if name == b"x-request-id":
                    if _REQUEST_ID.fullmatch(value):
                        request_id = value
                    break
        else:
            origin = None
            preflight = False
            for name, value in scope["headers"]:
                if name == b"x-request-id":
                    if _REQUEST_ID.fullmatch(value):
                        request_id = value
                elif name == b"origin":
                    origin = value
                elif name == PREFLIGHT_HEADER:
                    preflight = True
            if preflight and origin is not None and scope["method"] == "OPTIONS":
                app = functools.partial(cors.preflight, origin=origin)  # it makes its own headers
            else:
                extra = cors.response_headers(origin)
        if request_id is None:
            # Unique enough to correlate log lines, and no system call per request.
            request_id = b"%016x" % random.getrandbits(64)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id), *extra]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            if status == 500 and scope.get(CLIENT_GONE_KEY):
                status = CLIENT_GONE
            route = route_label(scope)
            method = scope["method"]
            self.metrics.observe_request(route, method, status, seconds)
            if self.access_log is not None:
                client = scope.get("client")
                self.access_log.write(
                    method, route, scope["path"], status, seconds, request_id, client[0] if client else None
                )


class BearerAuth:
    """Requires the token under /api/: `Authorization: Bearer <token>`, or on GET and HEAD the
    `access_token` query parameter (RFC 6750), for browsers, whose EventSource cannot send a
    header. The parameter is taken out of the query before anything else sees it, so that no
    log, Link header or problem detail can repeat it (docs/browsers.md). Probes, metrics, the
    OpenAPI document and the page stay open for the platform."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(API_PREFIX):
            credentials = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    credentials = value
                    break
            query_token = None
            if b"access_token" in scope["query_string"]:
                query_token, scope["query_string"] = take_access_token(scope["query_string"])
            if credentials is None:
                if query_token is None or scope["method"] not in ("GET", "HEAD"):
                    await _refuse(scope, receive, send, "send Authorization: Bearer <token>", "")
                    return
                token = query_token
            else:
                scheme, _, token = credentials.partition(b" ")
                if scheme.lower() != b"bearer":
                    token = b""
            # compare_digest: the time taken must not tell how much of a guess was right.
            if not token or not hmac.compare_digest(token.strip(), self._token):
                await _refuse(scope, receive, send, "the bearer token is not valid", ', error="invalid_token"')
                return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, detail: str, error: str) -> None:
    response = error_response(Unauthorized(detail, f'Bearer realm="sessions"{error}'))
    await response(scope, receive, send)


def take_access_token(query_string: bytes) -> tuple[bytes | None, bytes]:
    """(the `access_token` parameter's value, percent-decoded; the query without it). A query
    that gives it twice yields b"" (no token matches it): RFC 6750 allows one."""
    kept: list[bytes] = []
    found: list[bytes] = []
    for part in query_string.split(b"&"):
        name, _, value = part.partition(b"=")
        if name == b"access_token":
            found.append(unquote_to_bytes(value.replace(b"+", b" ")))
        elif part:
            kept.append(part)
    token = found[0] if len(found) == 1 else (b"" if found else None)
    return token, b"&".join(kept)
