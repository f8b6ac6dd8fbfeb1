"""Problem details (RFC 9457): the one place where errors become responses.

`PROBLEMS` maps each domain error of `app.errors` to its status, title and type; everything
that answers with a problem (the exception handlers, the fast path, the middleware, the long
poll, a stream's ERROR event, the protocol's 431) builds it here."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import NamedTuple, cast

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from app import errors

PROBLEM_JSON = "application/problem+json"


class Problem(NamedTuple):
    status: int
    title: str
    type: str = "about:blank"
    retry_after: str | None = None  # seconds, for a Retry-After header


# A subclass without a row of its own answers as its nearest listed base class.
PROBLEMS: dict[type[errors.ServiceError], Problem] = {
    errors.ServiceError: Problem(500, "Internal Server Error"),
    errors.BadRequest: Problem(400, "Bad Request", "/problems/bad-request"),
    errors.InvalidJobId: Problem(400, "Invalid job id", "/problems/invalid-job-id"),
    errors.InvalidRevision: Problem(400, "Bad Request", "/problems/bad-request"),
    errors.Unauthorized: Problem(401, "Unauthorized", "/problems/unauthorized"),
    errors.OriginNotAllowed: Problem(403, "Origin not allowed", "/problems/origin-not-allowed"),
    errors.SessionNotFound: Problem(404, "Session not found", "/problems/session-not-found"),
    errors.SessionFileInvalid: Problem(404, "Session file is invalid", "/problems/session-file-invalid"),
    errors.RevisionExpired: Problem(410, "Revision expired", "/problems/revision-expired"),
    errors.StreamFellBehind: Problem(410, "Stream fell behind", "/problems/stream-fell-behind"),
    errors.HeadTooLarge: Problem(431, "Request Header Fields Too Large"),
    errors.TemporarilyUnavailable: Problem(
        503, "Session temporarily unavailable", "/problems/temporarily-unavailable", "1"
    ),
    errors.TooManyStreams: Problem(503, "Too many streams", "/problems/too-many-streams", "1"),
    errors.Warming: Problem(503, "Warming up", "/problems/warming-up", "1"),
    errors.NotServingStreams: Problem(503, "Not serving streams now", "/problems/not-serving-streams", "1"),
}


def problem_of(exc: errors.ServiceError) -> Problem:
    for cls in type(exc).__mro__:
        found = PROBLEMS.get(cls)
        if found is not None:
            return found
    raise AssertionError("ServiceError has a row")  # unreachable: the base class is listed


def problem_body(status: int, title: str, detail: str, type_: str = "about:blank") -> bytes:
    return orjson.dumps({"type": type_, "title": title, "status": status, "detail": detail})


def error_body(exc: errors.ServiceError) -> bytes:
    """The problem document of `exc`: a response's body, or the object of a stream's ERROR."""
    found = problem_of(exc)
    return problem_body(found.status, found.title, exc.detail, found.type)


def problem(
    status: int,
    title: str,
    detail: str,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = problem_body(status, title, detail, type_)
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def error_response(exc: errors.ServiceError, headers: Mapping[str, str] | None = None) -> Response:
    """The response for `exc`, with its Retry-After or challenge, and any `headers` added."""
    found = problem_of(exc)
    extra = dict(headers or {})
    if found.retry_after is not None:
        extra["Retry-After"] = found.retry_after
    if isinstance(exc, errors.Unauthorized):
        extra["WWW-Authenticate"] = exc.challenge
    return problem(found.status, found.title, exc.detail, found.type, extra or None)


async def service_error(request: Request, exc: Exception) -> Response:
    return error_response(cast(errors.ServiceError, exc))  # registered for ServiceError only


async def http_error(request: Request, exc: Exception) -> Response:
    exc = cast(HTTPException, exc)  # registered for HTTPException only
    if exc.status_code == 404:
        detail = f"no route for {request.url.path[:200]!r}"
    else:
        detail = exc.detail
    return problem(exc.status_code, _title(exc.status_code), detail, headers=exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log (uvicorn logs the re-raised exception), never to the client.
    return problem(500, "Internal Server Error", "the server failed to answer; this is logged")


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
