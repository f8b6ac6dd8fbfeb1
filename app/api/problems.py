"""Problem details (RFC 9457): the one place where errors become responses."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import cast

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from app.errors import ServiceError

PROBLEM_JSON = "application/problem+json"


def problem_body(status: int, title: str, detail: str, type_: str = "about:blank") -> bytes:
    return orjson.dumps({"type": type_, "title": title, "status": status, "detail": detail})


def problem(
    status: int,
    title: str,
    detail: str,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = problem_body(status, title, detail, type_)
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


async def service_error(request: Request, exc: Exception) -> Response:
    exc = cast(ServiceError, exc)  # registered for ServiceError only
    headers = {"Retry-After": exc.retry_after} if exc.retry_after is not None else None
    return problem(exc.status, exc.title, exc.detail, exc.type, headers)


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
