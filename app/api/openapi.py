"""The OpenAPI 3 document, assembled from the application's routes.

Each route's operation is declared here beside the constants the code validates with, and the
document is built by walking `app.api.routes`: a route without a declared operation fails the build
(and the tests), so the document cannot silently miss one.

It is written for client generators (docs/generated-clients.md), which turn every detail into
code: security is declared only where the running service asks for a token; booleans are
booleans; no parameter has a `default`, since generated code sends declared defaults and an
unasked-for `limit=100` turns a watch into a 400 (the defaults are in the descriptions); HEAD is
served for every GET but not declared, since generators would emit a twin of each operation;
every header the service sends is declared; problem types resolve to pages (app.api.problemtypes).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from app import __version__
from app.api.listing import DEFAULT_LIMIT, MAX_LIMIT, MAX_STATUSES
from app.api.problemtypes import PREFIX as PROBLEM_PREFIX
from app.api.routes import JOB, JOBS, PAGE_PATHS, PROBLEM_TYPE
from app.store.changelog import REVISION_PATTERN
from app.store.sessionfile import JOB_ID_PATTERN

_PROBLEM = {"$ref": "#/components/schemas/Problem"}
_HEAD_NOTE = " HEAD is served too: the same status and headers, without the body."


def _header(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


def _headers(*names: str) -> dict[str, Any]:
    # X-Request-ID is on every response: the outermost middleware adds it.
    return {name: _header(name) for name in ("X-Request-ID", *names)}


def _problem(description: str, *headers: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _headers(*headers),
        "content": {"application/problem+json": {"schema": _PROBLEM}},
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _headers("Cache-Control"),
        "content": {"application/json": {"schema": schema}},
    }


_BOOLEAN_NOTE = (
    "A boolean: true or false; the server also takes 1/0, yes/no, on/off, t/f, y/n in any case (the "
    "spellings FastAPI accepts)."
)
_STREAM_NOTE = (
    "With watch=true: a stream of events, NDJSON by default, Server-Sent Events with "
    "`Accept: text/event-stream`. Each event is one JSON object "
    '`{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "revision": R, "object": ...}` (see Event).'
)
_STREAMS = {
    "application/x-ndjson": {
        "schema": {"type": "string", "description": "One event object (see Event) a line."},
    },
    "text/event-stream": {
        "schema": {
            "type": "string",
            "description": "`retry:`, then per event `id:`, `event:` (the type) and `data:` (the event object).",
        },
    },
}
_WATCH = {
    "name": "watch",
    "in": "query",
    "required": False,
    "description": "true: stream the changes instead of answering once. Absent: false. " + _BOOLEAN_NOTE,
    "schema": {"type": "boolean"},
}
_LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "Resume a watch: the collection's last revision, or the job's last ETag. Wins over revision=.",
    "schema": {"type": "string"},
}
_REQUEST_ID = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "An id to find this request by in the service's logs; echoed in the response. One is made up "
    "when absent or not 1 to 128 of A-Z a-z 0-9 . _ : / + = -.",
    "schema": {"type": "string"},
}
_BUSY = "Retry after Retry-After seconds."


def _api_operations(token_required: bool) -> dict[str, dict[str, Any]]:
    """The API's operations. With a token, each declares it and its 401."""
    security: dict[str, Any] = {}
    unauthorized: dict[str, Any] = {}
    if token_required:
        # Alternatives: a requirement list holds one way or the other.
        security = {"security": [{"bearer": []}, {"access_token": []}]}
        unauthorized = {
            "401": _problem(
                "The token (SESSIONS_API_TOKEN) was missing or wrong: send `Authorization: Bearer <token>`, or on "
                "GET and HEAD the `access_token` query parameter.",
                "WWW-Authenticate",
            )
        }
    job = {
        "operationId": "getJob",
        "summary": "One job session document",
        "description": "The document as its file holds it; its changes with watch=true; a long poll with "
        "If-None-Match and `Prefer: wait=N`." + _HEAD_NOTE,
        **security,
        "parameters": [
            {
                "name": "job_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": f"^{JOB_ID_PATTERN}$"},
            },
            {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "description": "A 304 when it names the current ETag; with watch=true, the version the client has.",
                "schema": {"type": "string"},
            },
            {
                "name": "Prefer",
                "in": "header",
                "required": False,
                "description": "wait=N (whole seconds): when If-None-Match names the current ETag, wait up to N "
                "seconds (capped at SESSIONS_MAX_WAIT_S) for a new version: 200 as soon as one is applied, 404 if "
                "the session is deleted, 304 after N seconds. Other preferences are ignored.",
                "schema": {"type": "string", "pattern": "^(.*[,;]\\s*)?wait=\\d{1,12}(\\s*[,;].*)?$"},
            },
            _WATCH,
            _LAST_EVENT_ID,
            _REQUEST_ID,
        ],
        "responses": {
            "200": {
                "description": "The document; `X-Session-Stale: true` when its file is invalid and this is its last "
                "valid version. " + _STREAM_NOTE + " A job's events carry `etag`, and `object` is the whole document.",
                "headers": _headers(
                    "ETag", "Cache-Control", "X-Session-Stale", "Preference-Applied", "Vary", "X-Accel-Buffering"
                ),
                "content": {
                    "application/json": {"schema": {"type": "object", "additionalProperties": True}},
                    **_STREAMS,
                },
            },
            "304": {
                "description": "Not modified: If-None-Match matches the current ETag (after the wait, in a long poll).",
                "headers": {
                    **_headers("Cache-Control", "X-Session-Stale", "Preference-Applied"),
                    "ETag": _header("ETag-304"),  # always sent, unlike a 200's (absent on streams)
                },
            },
            "400": _problem("Not a job id; a watch with revision= (job watches resume by ETag); a malformed Prefer."),
            **unauthorized,
            "404": _problem("No such session, or its file has never been valid (the detail says why)."),
            "503": _problem(
                "The service is warming up; or the session exists but cannot be read right now; or, for a watch or "
                "a long poll, the stream limit is reached, or the service shuts down. " + _BUSY,
                "Retry-After",
            ),
        },
    }
    jobs = {
        "operationId": "listJobs",
        "summary": "Summaries of job sessions",
        "description": "Newest `updated_at` first, in keyset pages; with watch=true, their changes." + _HEAD_NOTE,
        **security,
        "parameters": [
            {
                "name": "status",
                "in": "query",
                "required": False,
                "description": "Only sessions with one of these statuses; repeat the parameter (status=a&status=b) or "
                "separate them with commas (status=a,b).",
                "schema": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STATUSES},
                "style": "form",
                "explode": True,
            },
            {
                "name": "user_id",
                "in": "query",
                "required": False,
                "description": "Only this user's sessions.",
                "schema": {"type": "string", "minLength": 1},
            },
            {
                "name": "include_saved",
                "in": "query",
                "required": False,
                "description": "false: only sessions that are not finished (by default completed, failed and "
                "cancelled; SESSIONS_FINISHED_STATUSES says which). Absent: true, every session. " + _BOOLEAN_NOTE,
                "schema": {"type": "boolean"},
            },
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "description": f"The page size. Absent: {DEFAULT_LIMIT}. Not with watch=true.",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
            },
            {
                "name": "cursor",
                "in": "query",
                "required": False,
                "description": "Opaque: from the previous page's Link. Not with watch=true.",
                "schema": {"type": "string"},
            },
            _WATCH,
            {
                "name": "revision",
                "in": "query",
                "required": False,
                "description": "With watch=true: every change after this revision (from X-Revision, an event, or "
                "/readyz); without it, first an ADDED event for every matching session, then a BOOKMARK with "
                '"initial_events_end": true.',
                "schema": {"type": "string", "pattern": f"^{REVISION_PATTERN}$"},
            },
            _LAST_EVENT_ID,
            _REQUEST_ID,
        ],
        "responses": {
            "200": {
                "description": "A page of summaries. " + _STREAM_NOTE,
                "headers": _headers(
                    "X-Total-Count", "Link", "X-Revision", "Cache-Control", "Vary", "X-Accel-Buffering"
                ),
                "content": {
                    "application/json": {
                        "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Summary"}}
                    },
                    **_STREAMS,
                },
            },
            "400": _problem("A bad limit, cursor, boolean or revision; watch=true with limit or cursor."),
            **unauthorized,
            "410": _problem(
                "watch=true from a revision this replica does not hold: list again, watch from X-Revision. (Over "
                "Server-Sent Events: a 200 whose ERROR event carries this problem.)"
            ),
            "503": _problem(
                "Warming up (every API request, until readiness); at SESSIONS_MAX_STREAMS streams and waiting "
                "requests, or shutting down (watches). " + _BUSY,
                "Retry-After",
            ),
        },
    }
    return {JOB: job, JOBS: jobs}


_OPEN_OPERATIONS: dict[str, dict[str, Any]] = {
    "/": {
        "operationId": "page",
        "summary": "The live jobs page, for a browser." + _HEAD_NOTE,
        "responses": {
            "200": {
                "description": "The page.",
                "headers": _headers("Cache-Control"),
                "content": {"text/html": {"schema": {"type": "string"}}},
            }
        },
    },
    "/livez": {
        "operationId": "livez",
        "summary": "Liveness: 200 while the process serves." + _HEAD_NOTE,
        "responses": {"200": _json("Alive.", {"type": "object"})},
    },
    "/healthz": {
        "operationId": "healthz",
        "summary": "Liveness (alias of /livez)." + _HEAD_NOTE,
        "responses": {"200": _json("Alive.", {"type": "object"})},
    },
    "/readyz": {
        "operationId": "readyz",
        "summary": "Readiness: 200 once warm, 503 while warming or draining." + _HEAD_NOTE,
        "responses": {
            "200": _json("Ready.", {"$ref": "#/components/schemas/Readiness"}),
            "503": _json("Warming up or draining.", {"$ref": "#/components/schemas/Readiness"}),
        },
    },
    "/metrics": {
        "operationId": "metrics",
        "summary": "Prometheus metrics, text format." + _HEAD_NOTE,
        "responses": {
            "200": {
                "description": "Metrics.",
                "headers": _headers("Cache-Control"),
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    },
    "/openapi.json": {
        "operationId": "openapi",
        "summary": "This document." + _HEAD_NOTE,
        "responses": {"200": _json("OpenAPI 3 document.", {"type": "object"})},
    },
    PROBLEM_TYPE: {
        "operationId": "problemType",
        "summary": "A page describing a problem type: what a problem's `type` resolves to." + _HEAD_NOTE,
        "parameters": [
            {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[a-z-]+$"}}
        ],
        "responses": {
            "200": {
                "description": "The page.",
                "headers": _headers("Cache-Control"),
                "content": {"text/html": {"schema": {"type": "string"}}},
            },
            "404": _problem("Not a problem type of this service."),
        },
    },
}

_STRING = {"type": "string"}
_NULLABLE_ANY: dict[str, Any] = {}
_SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "A problem detail (RFC 9457).",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {
                "type": "string",
                "format": "uri-reference",
                "description": f"`{PROBLEM_PREFIX}<name>`: resolved against the request's URL, a page describing "
                "the problem type; `about:blank` for plain HTTP errors. Compare it as a string.",
            },
            "title": _STRING,
            "status": {"type": "integer"},
            "detail": _STRING,
        },
    },
    "Summary": {
        "type": "object",
        "required": ["job_id", "status", "user_id", "created_at", "updated_at"],
        "description": "Values exactly as the document wrote them; null where it has none.",
        "properties": {
            "job_id": _STRING,
            "status": _NULLABLE_ANY,
            "user_id": _NULLABLE_ANY,
            "created_at": _NULLABLE_ANY,
            "updated_at": _NULLABLE_ANY,
        },
    },
    "Event": {
        "type": "object",
        "required": ["type", "revision"],
        "description": "A change-stream event (NDJSON line, or SSE data).",
        "properties": {
            "type": {"type": "string", "enum": ["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]},
            "revision": _STRING,
            "etag": {"type": "string", "description": "Job watches: the version's ETag."},
            "initial_events_end": {"type": "boolean"},
            "object": {"description": "A summary (collection), a document (job), or a problem (ERROR)."},
        },
    },
    "Readiness": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "enum": ["ready", "warming", "draining"]},
            "sessions": {"type": "integer"},
            "revision": {"type": "string", "pattern": f"^{REVISION_PATTERN}$"},
        },
    },
}
_HEADERS: dict[str, Any] = {
    "X-Request-ID": {
        "description": "The request's id, as in the service's logs: the caller's X-Request-ID, or one made up.",
        "required": True,
        "schema": _STRING,
    },
    "ETag": {"description": "The version's strong ETag (absent on streams).", "schema": _STRING},
    "ETag-304": {"description": "The current version's ETag.", "required": True, "schema": _STRING},
    "Cache-Control": {
        "description": "no-cache on documents and lists (revalidate with If-None-Match before reuse); no-store on "
        "probes and metrics.",
        "schema": _STRING,
    },
    "X-Session-Stale": {
        "description": "true: the session's file is invalid now, and this is its last valid version.",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Preference-Applied": {"description": "wait=N: the long poll's wait, as applied.", "schema": _STRING},
    "Vary": {"description": "Accept on streams; Origin when CORS is on.", "schema": _STRING},
    "X-Accel-Buffering": {"description": "no, on streams: proxies must not buffer them.", "schema": _STRING},
    "X-Total-Count": {"description": "The number of sessions matching the filters.", "schema": {"type": "integer"}},
    "Link": {"description": 'The next page: `<...>; rel="next"`; absent on the last.', "schema": _STRING},
    "X-Revision": {"description": "The store revision the page reflects: watch from it.", "schema": _STRING},
    "Retry-After": {"description": "Seconds to wait before retrying.", "required": True, "schema": {"type": "integer"}},
    "WWW-Authenticate": {
        "description": 'Bearer realm="sessions", with error= for a wrong token.',
        "required": True,
        "schema": _STRING,
    },
}
_SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer"},
    "access_token": {
        "type": "apiKey",
        "in": "query",
        "name": "access_token",
        "description": "The token as a query parameter (RFC 6750), on GET and HEAD: for browsers, whose "
        "EventSource cannot send Authorization. Never logged.",
    },
}


def openapi_path(route_path: str) -> str:
    return route_path.replace("{job_id:jobpath}", "{job_id}")


def build_openapi(routes: list[BaseRoute], token_required: bool = False) -> dict[str, Any]:
    """The document for `routes`, as a service with (`token_required`) or without a token runs."""
    operations = {**_api_operations(token_required), **_OPEN_OPERATIONS}
    paths: dict[str, Any] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        path = openapi_path(route.path)
        key = path.rstrip("/") if path != "/" else path
        if key in PAGE_PATHS:
            continue  # HTML for people, not an operation for generators
        operation = operations[key]  # KeyError: a route without a documented operation
        paths.setdefault(key, {"get": operation})  # /api/v2/jobs/ is /api/v2/jobs
    components: dict[str, Any] = {"schemas": _SCHEMAS, "headers": _HEADERS}
    if token_required:
        components["securitySchemes"] = _SECURITY_SCHEMES
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Job-session service",
            "version": __version__,
            "description": "Job-session documents served from a folder, from memory. Every GET is served for HEAD "
            "too. Errors are application/problem+json; a problem's `type` resolves to a page describing it.",
        },
        "paths": paths,
        "components": components,
    }


class OpenAPIEndpoint:
    """GET /openapi.json: the document of the running configuration, built at the first request."""

    def __init__(self, token_required: bool = False) -> None:
        self._token_required = token_required
        self._body: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._body is None:
            self._body = orjson.dumps(build_openapi(scope["app"].routes, self._token_required))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self._body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else self._body})
