"""Liveness and readiness probes for Kubernetes and load balancers."""

from __future__ import annotations

import threading

import orjson
from starlette.types import Receive, Scope, Send

_LIVE = b'{"status":"ok"}'
_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


async def _reply(scope: Scope, send: Send, status: int, body: bytes) -> None:
    headers = [*_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


class LivenessEndpoint:
    """GET /livez, /healthz: the process serves. Touches nothing else, so it stays fast while
    the store warms, rescans or churns."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _reply(scope, send, 200, _LIVE)


class ReadinessEndpoint:
    """GET /readyz: 200 once warm; 503 while warming and after SIGTERM (draining).

    A file server that goes away does not make a warm replica unready: every replica shares the
    folder, so all of them would turn unready at once (an outage), while each can still serve
    what it holds. The body says what is true instead: `"folder"` is "ok", "unreachable" or
    "not answering" (docs/network-volumes.md)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["state"]
        draining: threading.Event = state["draining"]
        if draining.is_set():
            await _reply(scope, send, 503, b'{"status":"draining"}')
        elif not state["reconciler"].ready.is_set():
            await _reply(scope, send, 503, b'{"status":"warming"}')
        else:
            store = state["store"]
            body = orjson.dumps(
                {
                    "status": "ready",
                    "sessions": store.session_count(),
                    "revision": store.log.token(store.revision),
                    "folder": state["reconciler"].folder_state(),
                }
            )
            await _reply(scope, send, 200, body)
