"""Cross-origin requests (CORS) for browser pages on other origins, on only when
SESSIONS_CORS_ORIGINS lists origins (see docs/browsers.md).

The policy is applied by the request observer (app.api.middleware), which already reads every
request's headers and adds one to every response: a middleware of its own, with a second
wrapper around `send`, cost GET by id a tenth of its throughput (`python -m bench.cors`).
Starlette's CORSMiddleware costs that and more (a `Headers` object per request), and answers a
preflight 200 with a text body where a 204 is expected.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from app.api.problems import error_response
from app.errors import OriginNotAllowed

Header = tuple[bytes, bytes]

ALLOW_METHODS = b"GET, HEAD"
# What callers send: the token, conditional and long-poll requests, SSE resumes, correlation.
ALLOW_HEADERS = b"Authorization, If-None-Match, Prefer, Last-Event-ID, X-Request-ID"
# What a page needs to read beyond the CORS-safelisted response headers.
EXPOSE_HEADERS = (
    b"ETag, X-Revision, X-Total-Count, Link, X-Request-ID, X-Session-Stale, Preference-Applied, Retry-After"
)
# How long a browser may reuse a preflight's answer (Chromium caps it at 2 hours).
MAX_AGE = b"600"
# On every response: what it carries depends on the caller's origin, and a shared cache must
# not hand one origin's answer to another.
VARY: Header = (b"vary", b"Origin")
PREFLIGHT_HEADER = b"access-control-request-method"


class CorsPolicy:
    """Which origins may read the service's answers: the headers each response gets, made once
    per origin here, and the answer to a preflight (204 for an allowed origin, 403 otherwise)."""

    def __init__(self, origins: tuple[str, ...]) -> None:
        self._any = "*" in origins
        self.not_cross_origin: tuple[Header, ...] = (VARY,)
        self._allowed: dict[bytes, tuple[Header, ...]] = {
            origin.encode("ascii"): self._headers(origin.encode("ascii")) for origin in origins if origin != "*"
        }
        self._any_origin = self._headers(b"*")

    @staticmethod
    def _headers(allow: bytes) -> tuple[Header, ...]:
        return ((b"access-control-allow-origin", allow), (b"access-control-expose-headers", EXPOSE_HEADERS), VARY)

    def response_headers(self, origin: bytes | None) -> tuple[Header, ...]:
        """The headers a response to a request from `origin` (None: no Origin header) gets."""
        if origin is None:
            return self.not_cross_origin
        if self._any:
            return self._any_origin
        return self._allowed.get(origin, self.not_cross_origin)

    async def preflight(self, scope: Scope, receive: Receive, send: Send, origin: bytes) -> None:
        if not self._any and origin not in self._allowed:
            response = error_response(
                OriginNotAllowed("this origin is not in SESSIONS_CORS_ORIGINS"), {"Vary": "Origin"}
            )
            await response(scope, receive, send)
            return
        headers = [
            (b"access-control-allow-origin", b"*" if self._any else origin),
            (b"access-control-allow-methods", ALLOW_METHODS),
            (b"access-control-allow-headers", ALLOW_HEADERS),
            (b"access-control-max-age", MAX_AGE),
            VARY,
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
