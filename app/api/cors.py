"""Cross-origin requests (CORS) for browser pages on other origins: a plain ASGI middleware,
installed only when SESSIONS_CORS_ORIGINS lists origins (see docs/browsers.md).

Starlette's CORSMiddleware answers a preflight 200 with a text body and parses every request's
headers into a `Headers` object; here a preflight is a 204, and a request costs one scan of its
header list and one header append.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import error_response
from app.errors import OriginNotAllowed

ALLOW_METHODS = b"GET, HEAD"
# What callers send: the token, conditional and long-poll requests, SSE resumes, correlation.
ALLOW_HEADERS = b"Authorization, If-None-Match, Prefer, Last-Event-ID, X-Request-ID"
# What a page needs to read beyond the CORS-safelisted response headers.
EXPOSE_HEADERS = (
    b"ETag, X-Revision, X-Total-Count, Link, X-Request-ID, X-Session-Stale, Preference-Applied, Retry-After"
)
# How long a browser may reuse a preflight's answer (Chromium caps it at 2 hours).
MAX_AGE = b"600"
_VARY = (b"vary", b"Origin")


class Cors:
    """Answers preflights (204) for allowed origins, refuses them (403) for others, and adds
    `Access-Control-Allow-Origin` and the exposed headers to the responses of allowed origins.
    Every response says `Vary: Origin`: what it carries depends on the caller's origin, and a
    shared cache must not hand one origin's answer to another."""

    def __init__(self, app: ASGIApp, origins: tuple[str, ...]) -> None:
        self.app = app
        self._any = "*" in origins
        self._origins = frozenset(origin.encode("ascii") for origin in origins if origin != "*")

    def _allowed(self, origin: bytes) -> bytes | None:
        """The Access-Control-Allow-Origin value for `origin`, or None when it is not allowed."""
        if self._any:
            return b"*"
        return origin if origin in self._origins else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = preflight = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                preflight = value
        if origin is None:
            extra = [_VARY]
        else:
            allow = self._allowed(origin)
            if preflight is not None and scope["method"] == "OPTIONS":
                await self._preflight(scope, receive, send, allow)
                return
            if allow is None:
                extra = [_VARY]
            else:
                extra = [
                    (b"access-control-allow-origin", allow),
                    (b"access-control-expose-headers", EXPOSE_HEADERS),
                    _VARY,
                ]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, scope: Scope, receive: Receive, send: Send, allow: bytes | None) -> None:
        if allow is None:
            response = error_response(
                OriginNotAllowed("this origin is not in SESSIONS_CORS_ORIGINS"), {"Vary": "Origin"}
            )
            await response(scope, receive, send)
            return
        headers = [
            (b"access-control-allow-origin", allow),
            (b"access-control-allow-methods", ALLOW_METHODS),
            (b"access-control-allow-headers", ALLOW_HEADERS),
            (b"access-control-max-age", MAX_AGE),
            _VARY,
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
