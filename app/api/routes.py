"""Every route of the service in one table. Each entry says where a route is (its template,
which is also its metric label and the key of its OpenAPI operation in app.api.openapi), which
endpoint serves it, whether the bearer token guards it, and the labels of its streams and long
polls. The router (app.api.application), the fast path (app.api.jobs), the token check
(app.api.middleware), the protocol's stream detection (app.server.httpprotocol), metric labels
and access logs (`route_label`) and the OpenAPI document all read it."""

from __future__ import annotations

from typing import NamedTuple

from starlette.types import Scope

JOBS = "/api/v2/jobs"
JOB = "/api/v2/jobs/{job_id}"
JOB_PREFIX = "/api/v2/jobs/"
PROBLEM_TYPE = "/problems/{name}"
# Labels of requests that are not plain reads: a stream's duration is its lifetime, a long poll's
# its wait, so they are kept apart from the latency of reads.
JOBS_WATCH = JOBS + "?watch"
JOB_WATCH = JOB + "?watch"
JOB_WAIT = JOB + "?wait"
# The token guards every path under it, one that no route serves included (a 401, not a 404,
# so that an unauthenticated caller learns nothing of the API's paths).
API_PREFIX = "/api/"
# A request whose query holds this may be a stream (the endpoint parses the query to be sure).
WATCH_PARAMETER = b"watch"
# The request's metric label in the scope: set by the fast path, and by an endpoint whose request
# is a stream or a long poll.
LABEL_KEY = "sessions.route"
# Set by an endpoint that gave no answer because its client had gone (a long poll): 499, as
# nginx logs it, rather than the 500 of a request that never answered.
CLIENT_GONE_KEY = "sessions.client_gone"
CLIENT_GONE = 499


class RouteSpec(NamedTuple):
    template: str  # the OpenAPI path, the key of its operation, and the metric label
    paths: tuple[str, ...]  # the Starlette paths that serve it
    endpoint: str  # which endpoint serves it (application.create_app maps the names)
    plain: bool  # only GET and HEAD reach it (the router answers 405); else it checks itself
    auth: bool = False  # the bearer token guards it (it is under API_PREFIX)
    # The API's routes: served by the fast path, around Starlette's router.
    fast: bool = False
    labels: tuple[str, ...] = ()  # the labels of its streams and long polls


ROUTES = (
    # First, as the hottest route. Any non-empty rest of the path, slashes included, reaches
    # the id check (400, not 404); "/api/v2/jobs/" itself is the list.
    RouteSpec(JOB, ("/api/v2/jobs/{job_id:jobpath}",), "job", False, True, True, (JOB_WATCH, JOB_WAIT)),
    RouteSpec(JOBS, (JOBS, JOBS + "/"), "jobs", False, True, True, (JOBS_WATCH,)),
    RouteSpec("/livez", ("/livez",), "live", True),
    RouteSpec("/healthz", ("/healthz",), "live", True),
    RouteSpec("/readyz", ("/readyz",), "ready", True),
    RouteSpec("/metrics", ("/metrics",), "metrics", True),
    RouteSpec("/openapi.json", ("/openapi.json",), "openapi", True),
    RouteSpec(PROBLEM_TYPE, (PROBLEM_TYPE,), "problem_type", True),
    # The live jobs page (app.api.page): for people, so not in the OpenAPI document.
    RouteSpec("/", ("/",), "page", True),
    RouteSpec("/ui/app.js", ("/ui/app.js",), "page", True),
    RouteSpec("/ui/app.css", ("/ui/app.css",), "page", True),
)
PAGE_PATHS = frozenset({"/", "/ui/app.js", "/ui/app.css"})
LABELS = frozenset(
    {spec.template for spec in ROUTES} | {label for spec in ROUTES for label in spec.labels} | {"unmatched"}
)
_BY_PATH = {path: spec for spec in ROUTES for path in spec.paths if "{" not in path}
# (prefix, parameter, route) of each path with a parameter: the parameter is the rest of the path.
_PREFIXED = tuple(
    (path[: path.index("{")], path[path.index("{") + 1 :].split(":")[0].rstrip("}"), spec)
    for spec in ROUTES
    for path in spec.paths
    if "{" in path
)
_STREAMING = tuple(
    path[: path.index("{")] if "{" in path else path for spec in ROUTES if spec.labels for path in spec.paths
)


def match(path: str) -> tuple[RouteSpec, dict[str, str]] | None:
    """The route serving `path` and its path parameters, or None."""
    spec = _BY_PATH.get(path)
    if spec is not None:
        return spec, {}
    for prefix, parameter, spec in _PREFIXED:
        if path.startswith(prefix) and len(path) > len(prefix):
            return spec, {parameter: path[len(prefix) :]}
    return None


def route_template(path: str) -> str:
    """The route a path belongs to: never the raw path, whose values are unbounded."""
    matched = match(path)
    return matched[0].template if matched is not None else "unmatched"


def route_label(scope: Scope) -> str:
    label: str | None = scope.get(LABEL_KEY)
    return label if label is not None else route_template(scope["path"])


def may_stream(path: str, query_string: bytes) -> bool:
    """Whether a request may become a stream: asks for a watch on a route that has them."""
    return WATCH_PARAMETER in query_string and path.startswith(_STREAMING)
