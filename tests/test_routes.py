"""The route table (app/api/routes.py): what each reader of it gets from one entry."""

from __future__ import annotations

from starlette.routing import Route

import app.api.application  # noqa: F401  (registers the job path convertor the table names)
from app.api.openapi import build_openapi
from app.api.routes import (
    API_PREFIX,
    JOB,
    JOB_WAIT,
    JOB_WATCH,
    JOBS,
    JOBS_WATCH,
    LABELS,
    PAGE_PATHS,
    ROUTES,
    match,
    may_stream,
)


def test_a_path_matches_its_route_and_parameters() -> None:
    assert match("/api/v2/jobs/abc") == (ROUTES[0], {"job_id": "abc"})
    job = match("/api/v2/jobs/a/b")  # the id check answers 400, not the router 404
    assert job is not None and job[0].template == JOB and job[1] == {"job_id": "a/b"}
    for path in ("/api/v2/jobs", "/api/v2/jobs/"):
        listed = match(path)
        assert listed is not None and listed[0].template == JOBS and listed[1] == {}
    readiness = match("/readyz")
    assert readiness is not None and readiness[0].endpoint == "ready"
    assert match("/api/v2/nothing") is None and match("/nothing") is None
    page = match("/")  # the live jobs page
    assert page is not None and page[0].endpoint == "page"


def test_the_token_guards_the_api_prefix_and_only_it() -> None:
    for spec in ROUTES:
        assert spec.auth == all(path.startswith(API_PREFIX) for path in spec.paths), spec
        assert spec.fast == spec.auth, spec  # the API's routes go around Starlette's router
    assert {spec.template for spec in ROUTES if spec.auth} == {JOB, JOBS}


def test_labels_and_operations_come_from_the_entries() -> None:
    assert LABELS == {spec.template for spec in ROUTES} | {JOB_WATCH, JOB_WAIT, JOBS_WATCH, "unmatched"}
    document = build_openapi([Route(path, _nothing) for spec in ROUTES for path in spec.paths], token_required=True)
    # every route but the live page's (HTML for people, not an operation)
    assert set(document["paths"]) == {spec.template for spec in ROUTES} - PAGE_PATHS
    secured = {path for path, operations in document["paths"].items() if "security" in operations["get"]}
    assert secured == {spec.template for spec in ROUTES if spec.auth}


def _nothing() -> None:
    pass


def test_only_a_watch_on_a_route_with_streams_may_stream() -> None:
    assert may_stream("/api/v2/jobs", b"watch=true")
    assert may_stream("/api/v2/jobs/abc", b"watch=1&x=y")
    assert not may_stream("/api/v2/jobs/abc", b"")
    assert not may_stream("/livez", b"watch=true")
