"""Every route of the service in one table, read by the router (app.api.application), the fast path
(app.api.jobs), metric labels and access logs (`route_label`), and the OpenAPI document."""

from __future__ import annotations

from typing import NamedTuple

from starlette.types import Scope

JOBS = "/api/v2/jobs"
JOB = "/api/v2/jobs/{job_id}"
JOB_PREFIX = "/api/v2/jobs/"
# Labels of requests that are not plain reads: a stream's duration is its lifetime, a long poll's
# its wait, so they are kept apart from the latency of reads.
JOBS_WATCH = JOBS + "?watch"
JOB_WATCH = JOB + "?watch"
JOB_WAIT = JOB + "?wait"
# Set in the scope by an endpoint whose request is one of those.
LABEL_KEY = "sessions.route"
# Set by an endpoint that gave no answer because its client had gone (a long poll): 499, as
# nginx logs it, rather than the 500 of a request that never answered.
CLIENT_GONE_KEY = "sessions.client_gone"
CLIENT_GONE = 499


class RouteSpec(NamedTuple):
    template: str  # the OpenAPI path and the metric label
    paths: tuple[str, ...]  # the Starlette paths that serve it
    endpoint: str  # which endpoint serves it (application.create_app maps the names)
    plain: bool  # only GET and HEAD reach it (the router answers 405); else it checks itself


ROUTES = (
    # First, as the hottest route. Any non-empty rest of the path, slashes included, reaches
    # the id check (400, not 404); "/api/v2/jobs/" itself is the list.
    RouteSpec(JOB, ("/api/v2/jobs/{job_id:jobpath}",), "job", False),
    RouteSpec(JOBS, (JOBS, JOBS + "/"), "jobs", False),
    RouteSpec("/livez", ("/livez",), "live", True),
    RouteSpec("/healthz", ("/healthz",), "live", True),
    RouteSpec("/readyz", ("/readyz",), "ready", True),
    RouteSpec("/metrics", ("/metrics",), "metrics", True),
    RouteSpec("/openapi.json", ("/openapi.json",), "openapi", True),
    # The live jobs page (app.api.page): for people, so not in the OpenAPI document.
    RouteSpec("/", ("/",), "page", True),
    RouteSpec("/ui/app.js", ("/ui/app.js",), "page", True),
    RouteSpec("/ui/app.css", ("/ui/app.css",), "page", True),
)
PAGE_PATHS = frozenset({"/", "/ui/app.js", "/ui/app.css"})
LABELS = frozenset({spec.template for spec in ROUTES} | {JOBS_WATCH, JOB_WATCH, JOB_WAIT, "unmatched"})
_BY_PATH = {path: spec.template for spec in ROUTES for path in spec.paths if "{" not in path}


def route_template(path: str) -> str:
    """The route a path belongs to: never the raw path, whose values are unbounded."""
    template = _BY_PATH.get(path)
    if template is not None:
        return template
    if path.startswith(JOB_PREFIX):
        return JOB
    return "unmatched"


def route_label(scope: Scope) -> str:
    label: str | None = scope.get(LABEL_KEY)
    return label if label is not None else route_template(scope["path"])
