"""Reference "lazy": the usual fix for a blocking handler, read and parse the file in a thread
on every request."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_FOLDER = Path(os.environ.get("SESSIONS_DIR", "."))
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _load(job_id: str) -> Any:
    return orjson.loads((_FOLDER / f"{job_id}.json").read_bytes())


async def job(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    if not _ID.match(job_id):
        return Response(status_code=400)
    try:
        document = await asyncio.to_thread(_load, job_id)
    except FileNotFoundError:
        return Response(status_code=404)
    return Response(orjson.dumps(document), media_type="application/json")


async def ok(request: Request) -> Response:
    return Response(b'{"status":"ready"}', media_type="application/json")


app = Starlette(routes=[Route("/api/v2/jobs/{job_id}", job), Route("/readyz", ok), Route("/livez", ok)])
