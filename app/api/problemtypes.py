"""The problem types the service uses, and `GET /problems/{name}`: a page describing each.

A problem detail's `type` is `/problems/<name>`, a URI reference that resolves against the
request's URL (RFC 9457) to the page this endpoint serves, so that a person who meets an error
can read what it means and what to do. The `type` values stay relative: clients compare them as
strings, and the same value must come from every replica and through every proxy. Pages are
rendered once, at import, and served from memory (docs/generated-clients.md).
"""

from __future__ import annotations

import html
from typing import NamedTuple

from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from app.api.problems import PROBLEMS

PREFIX = "/problems/"


class ProblemType(NamedTuple):
    meaning: str  # when the service answers it
    action: str  # what a client does about it


# By name: each type of app.api.problems' table (which gives its title and status) has a row.
PROBLEM_TYPES: dict[str, ProblemType] = {
    "bad-request": ProblemType(
        "A query parameter or header has a value the service cannot take: a limit outside 1 to 1000, a "
        "cursor it did not give, a value that is not a boolean, watch=true with limit or cursor, revision= "
        "without watch=true, a malformed Prefer, a query that is not ASCII or has too many parameters. "
        "The detail names the parameter.",
        "Fix the request as the detail says; sending it again unchanged gets the same answer.",
    ),
    "invalid-job-id": ProblemType(
        "The path under /api/v2/jobs/ is not a job id: 1 to 128 of A-Z a-z 0-9 . _ -, starting with a "
        "letter or a digit (percent-encoded slashes and dots included).",
        "Send a job id as the list gives it.",
    ),
    "unauthorized": ProblemType(
        "The service is configured with a token (SESSIONS_API_TOKEN) and the request carried none, or a "
        "wrong one. WWW-Authenticate says which.",
        "Send Authorization: Bearer <token>; a browser may send the access_token query parameter on GET "
        "and HEAD instead.",
    ),
    "origin-not-allowed": ProblemType(
        "A CORS preflight (OPTIONS) came from a page whose origin is not in SESSIONS_CORS_ORIGINS, or CORS is "
        "off (the default).",
        "Have the service's operator add the page's origin to SESSIONS_CORS_ORIGINS, or call the service from a "
        "server rather than a browser.",
    ),
    "session-not-found": ProblemType(
        "No session file has this job id, or it was deleted. A long poll answers it when the session is "
        "deleted while it waits.",
        "Check the id; list the sessions to find it. A session that appears later is served at once.",
    ),
    "session-file-invalid": ProblemType(
        "A file exists for this job id but has never held a valid session (not UTF-8, not JSON, not an "
        "object, too large, a job_id that is not its name, a link outside the folder). The detail gives "
        "the reason.",
        "Fix the file; `python -m app check` lists every invalid file of a folder with its reason.",
    ),
    "revision-expired": ProblemType(
        "A watch asked for the changes after a revision this replica does not hold: another replica's, "
        "from before a restart, or older than the history it keeps (SESSIONS_HISTORY). Over SSE it comes "
        "as an ERROR event whose empty id: resets the browser's last id.",
        "List again and watch from the list's X-Revision (a browser's EventSource starts over by itself).",
    ),
    "stream-fell-behind": ProblemType(
        "A collection watch read its events more slowly than they came, past its buffer: the stream ends "
        "with an ERROR event carrying this problem, so that memory per stream stays bounded.",
        "List again and watch from the list's X-Revision; read the stream faster.",
    ),
    "temporarily-unavailable": ProblemType(
        "The session exists but its document cannot be produced right now: its file is mid-write and its "
        "last valid version is no longer in memory, or the service is out of file descriptors.",
        "Retry after Retry-After seconds.",
    ),
    "warming-up": ProblemType(
        "The service has not loaded every session yet: an answer now could be a 404 for a session it has "
        "not read. /readyz says when it is ready.",
        "Retry after Retry-After seconds, or on another replica.",
    ),
    "too-many-streams": ProblemType(
        "SESSIONS_MAX_STREAMS watches and long polls are open at once; this one was refused.",
        "Retry after Retry-After seconds, or on another replica.",
    ),
    "not-serving-streams": ProblemType(
        "The service is warming up or shutting down: a watch or a long poll would miss what the warm-up "
        "loads, or be cut short.",
        "Retry after Retry-After seconds; behind a load balancer the retry reaches another replica.",
    ),
}


def type_uri(name: str) -> str:
    return PREFIX + name


def _page(name: str, status: int, title: str, problem: ProblemType) -> bytes:
    text = {"title": html.escape(title), "meaning": html.escape(problem.meaning), "action": html.escape(problem.action)}
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{text['title']}</title></head><body>\n"
        f"<h1>{text['title']}</h1>\n"
        f"<p>Problem type <code>{html.escape(type_uri(name))}</code>, HTTP status {status}.</p>\n"
        f"<h2>When</h2>\n<p>{text['meaning']}</p>\n"
        f"<h2>What to do</h2>\n<p>{text['action']}</p>\n"
        "<p>Errors are <code>application/problem+json</code> (RFC 9457): "
        "<code>type</code>, <code>title</code>, <code>status</code>, <code>detail</code>. "
        'The API is described at <a href="/openapi.json">/openapi.json</a>.</p>\n'
        "</body></html>\n"
    ).encode()


def _pages() -> dict[str, bytes]:
    pages: dict[str, bytes] = {}
    for row in PROBLEMS.values():
        if row.type.startswith(PREFIX) and row.type not in pages:
            name = row.type.removeprefix(PREFIX)
            pages[row.type] = _page(name, row.status, row.title, PROBLEM_TYPES[name])  # KeyError: a type without a page
    return pages


_PAGES = _pages()


class ProblemTypeEndpoint:
    """GET /problems/{name}: the page describing a problem type; a 404 for a name it does not use."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = _PAGES.get(scope["path"])
        if body is None:
            raise HTTPException(404)
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            # The pages change only with the service's version.
            (b"cache-control", b"public, max-age=3600"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
