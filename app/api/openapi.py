"""The OpenAPI 3 document, assembled from the application's routes.

Each route's operation is declared here beside the constants the code validates with, and the
document is built by walking `app.api.routes`: a route without a declared operation fails the build
(and the tests), so the document cannot silently miss one.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from app import __version__
from app.api.listing import DEFAULT_LIMIT, MAX_LIMIT
from app.api.routes import JOB, JOBS, PAGE_PATHS
from app.store.changelog import REVISION_PATTERN
from app.store.sessionfile import JOB_ID_PATTERN

_PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": _PROBLEM}}}


def _json(description: str, schema: dict[str, Any], headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


_UNAUTHORIZED = _problem("A bearer token is required (when SESSIONS_API_TOKEN is set) and was missing or wrong.")
_BOOLEAN = {"type": "string", "enum": ["true", "false", "1", "0"]}
_STREAM_NOTE = (
    "With watch=true: a stream of events (SPEC §6), NDJSON by default, Server-Sent Events with "
    "`Accept: text/event-stream`. Each event is one JSON object "
    '`{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "revision": R, "object": ...}`.'
)
_STREAMS = {
    "application/x-ndjson": {
        "schema": {"type": "string", "description": "One event object (see Event) a line."},
    },
    "text/event-stream": {
        "schema": {"type": "string", "description": "`id:`, `event:` (the type) and `data:` (the event object)."},
    },
}
_WATCH = {
    "name": "watch",
    "in": "query",
    "required": False,
    "description": "true: stream the changes instead of answering once (SPEC §6).",
    "schema": {**_BOOLEAN, "default": "false"},
}
_LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "Resume a watch: the collection's last revision, or the job's last ETag. Wins over revision=.",
    "schema": {"type": "string"},
}
_BUSY = _problem(
    "Warming up (every API request, until readiness); at SESSIONS_MAX_STREAMS streams and waiting requests, or "
    "shutting down (watches and long polls); Retry-After says when to try again."
)

OPERATIONS: dict[str, dict[str, Any]] = {
    JOB: {
        "operationId": "getJob",
        "summary": "One job session document, as its file holds it; its changes with watch=true; a long poll with "
        "If-None-Match and Prefer: wait=N.",
        "security": [{}, {"bearer": []}],
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
        ],
        "responses": {
            "200": {
                "description": "The document; `X-Session-Stale: true` when its file is invalid and this is its last "
                "valid version. " + _STREAM_NOTE + " A job's events carry `etag`, and `object` is the whole document.",
                "content": {
                    "application/json": {"schema": {"type": "object", "additionalProperties": True}},
                    **_STREAMS,
                },
                "headers": {
                    "ETag": {"schema": {"type": "string"}},
                    "X-Session-Stale": {"schema": {"type": "string", "enum": ["true"]}},
                    "Preference-Applied": {"schema": {"type": "string"}, "description": "wait=N, as applied."},
                },
            },
            "304": {
                "description": "Not modified: If-None-Match matches the current ETag (after the wait, in a long poll).",
                "headers": {"Preference-Applied": {"schema": {"type": "string"}}},
            },
            "400": _problem("Not a job id; a watch with revision= (job watches resume by ETag); a malformed Prefer."),
            "401": _UNAUTHORIZED,
            "404": _problem("No such session, or its file has never been valid (the detail says why)."),
            "503": _problem(
                "The service is warming up; or the session exists but cannot be read right now; or, for a watch or "
                "a long poll, the stream limit is reached, or the service shuts down. Retry (Retry-After)."
            ),
        },
    },
    JOBS: {
        "operationId": "listJobs",
        "summary": "Summaries of job sessions, newest `updated_at` first, in keyset pages.",
        "security": [{}, {"bearer": []}],
        "parameters": [
            {
                "name": "status",
                "in": "query",
                "required": False,
                "description": "Comma-separated statuses to keep.",
                "schema": {"type": "string"},
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
                "description": "false: only sessions not completed, failed or cancelled.",
                "schema": {**_BOOLEAN, "default": "true"},
            },
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
            },
            {
                "name": "cursor",
                "in": "query",
                "required": False,
                "description": "Opaque: from the previous page's Link.",
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
        ],
        "responses": {
            "200": {
                "description": "A page of summaries. " + _STREAM_NOTE,
                "content": {
                    "application/json": {
                        "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Summary"}}
                    },
                    **_STREAMS,
                },
                "headers": {
                    "X-Total-Count": {"schema": {"type": "integer"}},
                    "Link": {"schema": {"type": "string"}, "description": 'The next page: <...>; rel="next".'},
                    "X-Revision": {"schema": {"type": "string"}, "description": "The revision the page reflects."},
                },
            },
            "400": _problem("A bad limit, cursor, boolean or revision; watch=true with limit or cursor."),
            "401": _UNAUTHORIZED,
            "410": _problem(
                "watch=true from a revision this replica does not hold: list again, watch from X-Revision."
            ),
            "503": _BUSY,
        },
    },
    "/livez": {
        "operationId": "livez",
        "summary": "Liveness: 200 while the process serves.",
        "responses": {"200": _json("Alive.", {"type": "object"})},
    },
    "/healthz": {
        "operationId": "healthz",
        "summary": "Liveness (alias of /livez).",
        "responses": {"200": _json("Alive.", {"type": "object"})},
    },
    "/readyz": {
        "operationId": "readyz",
        "summary": "Readiness: 200 once warm, 503 while warming or draining.",
        "responses": {
            "200": _json("Ready.", {"$ref": "#/components/schemas/Readiness"}),
            "503": _json("Warming up or draining.", {"$ref": "#/components/schemas/Readiness"}),
        },
    },
    "/metrics": {
        "operationId": "metrics",
        "summary": "Prometheus metrics, text format.",
        "responses": {"200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    },
    "/openapi.json": {
        "operationId": "openapi",
        "summary": "This document.",
        "responses": {"200": _json("OpenAPI 3 document.", {"type": "object"})},
    },
}

_NULLABLE_ANY: dict[str, Any] = {}
COMPONENTS: dict[str, Any] = {
    "schemas": {
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
            },
        },
        "Summary": {
            "type": "object",
            "required": ["job_id", "status", "user_id", "created_at", "updated_at"],
            "description": "Values exactly as the document wrote them; null where it has none.",
            "properties": {
                "job_id": {"type": "string"},
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
                "revision": {"type": "string"},
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
    },
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
}


def openapi_path(route_path: str) -> str:
    return route_path.replace("{job_id:jobpath}", "{job_id}")


def _head_of(get: dict[str, Any]) -> dict[str, Any]:
    """The HEAD twin of a GET operation: the same statuses and headers, no body."""
    responses = {
        status: {name: value for name, value in response.items() if name != "content"}
        for status, response in get["responses"].items()
    }
    return {
        **get,
        "operationId": "head" + get["operationId"][:1].upper() + get["operationId"][1:],
        "summary": get.get("summary", "") + " (headers only)",
        "responses": responses,
    }


def build_openapi(routes: list[BaseRoute]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        path = openapi_path(route.path)
        key = path.rstrip("/") if path != "/" else path
        if key in PAGE_PATHS:
            continue  # HTML for people, not an operation for generators
        operation = OPERATIONS[key]  # KeyError: a route without a documented operation
        if key in paths:
            continue  # /api/v2/jobs/ is /api/v2/jobs
        paths[key] = {"get": operation, "head": _head_of(operation)}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Job-session service", "version": __version__},
        "paths": paths,
        "components": COMPONENTS,
    }


class OpenAPIEndpoint:
    """GET /openapi.json"""

    def __init__(self) -> None:
        self._body: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._body is None:
            self._body = orjson.dumps(build_openapi(scope["app"].routes))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self._body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else self._body})
