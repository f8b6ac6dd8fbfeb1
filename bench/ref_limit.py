"""Reference "limit": one prebuilt session body served from memory, whatever the id."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_FOLDER = Path(os.environ.get("SESSIONS_DIR", "."))
_BODY = next((path.read_bytes() for path in sorted(_FOLDER.glob("*.json"))), b"{}")


async def job(request: Request) -> Response:
    return Response(_BODY, media_type="application/json")


async def ok(request: Request) -> Response:
    return Response(b'{"status":"ready"}', media_type="application/json")


app = Starlette(routes=[Route("/api/v2/jobs/{job_id}", job), Route("/readyz", ok), Route("/livez", ok)])
