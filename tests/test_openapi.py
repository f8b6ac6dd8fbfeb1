"""GET /openapi.json: a valid OpenAPI 3 document of every route the application has, generated
from the code, whose limits are the ones the handlers enforce."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from app import __version__
from app.api.application import create_app
from app.api.openapi import build_openapi
from app.api.routes import PAGE_PATHS
from app.settings import load_settings
from tests.support import Server, put_session

SPEC_JOB_ID = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # SPEC §3


@pytest.fixture
def document(sessions_dir: Path, serve: Callable[..., Server]) -> dict[str, Any]:
    put_session(sessions_dir, "a")
    server = serve(sessions_dir)
    response = server.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


def app_paths(sessions_dir: Path) -> set[str]:
    """The application's routes as OpenAPI paths: converters dropped, a trailing slash folded."""
    app = create_app(load_settings({"SESSIONS_DIR": str(sessions_dir)}))
    paths = set()
    for route in app.routes:
        assert isinstance(route, Route), route  # a mount or websocket route would need documenting too
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        paths.add(path.rstrip("/") or "/")
    return paths


def parameters(document: dict[str, Any], path: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in document["paths"][path]["get"]["parameters"]}


def test_the_document_is_valid_openapi_3(document: dict[str, Any]) -> None:
    validate(document)  # raises on any violation of the OpenAPI schema
    assert document["openapi"].startswith("3.")
    assert document["info"]["version"] == __version__


def test_every_route_of_the_app_is_documented(sessions_dir: Path, document: dict[str, Any]) -> None:
    routes = app_paths(sessions_dir)
    # the live page is for people, not generators: every other route is documented
    assert routes - PAGE_PATHS == set(document["paths"])
    assert PAGE_PATHS <= routes
    assert {
        "/api/v2/jobs/{job_id}",
        "/api/v2/jobs",
        "/livez",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    } <= routes


def test_every_operation_is_complete(document: dict[str, Any]) -> None:
    operation_ids = []
    for path, item in document["paths"].items():
        assert set(item) == {"get", "head"}, path  # every GET answers HEAD too
        for method, operation in item.items():
            operation_ids.append(operation["operationId"])
            assert operation.get("summary"), (path, method)
            assert "200" in operation["responses"], (path, method)
            for status, response in operation["responses"].items():
                assert response.get("description"), (path, status)
                if method == "head":
                    assert "content" not in response, (path, status)  # headers only
                elif status.startswith(("4", "5")) and path.startswith("/api/"):
                    assert "application/problem+json" in response["content"], (path, status)
    assert len(operation_ids) == len(set(operation_ids))


def test_the_job_id_parameter_is_the_spec_pattern(document: dict[str, Any]) -> None:
    job_id = parameters(document, "/api/v2/jobs/{job_id}")["job_id"]
    assert job_id["in"] == "path" and job_id["required"] is True
    assert job_id["schema"]["type"] == "string"
    pattern = re.compile(job_id["schema"]["pattern"])
    for good in ("a", "0d227c42-769f-44c8-ad83-e026c97cf544", "job.v2_x-1", "a" * 128):
        assert pattern.search(good), good
    for bad in ("", ".hidden", "-x", "a/b", "a" * 129, "a b"):
        assert not pattern.search(bad), bad
    assert pattern.pattern == SPEC_JOB_ID


def test_the_list_parameters_are_the_endpoints_limits(document: dict[str, Any]) -> None:
    listed = parameters(document, "/api/v2/jobs")
    assert set(listed) == {
        "status",
        "user_id",
        "include_saved",
        "limit",
        "cursor",
        "watch",
        "revision",
        "Last-Event-ID",
    }
    limit = listed["limit"]
    assert limit["in"] == "query" and not limit["required"]
    assert limit["schema"]["type"] == "integer"
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"], limit["schema"]["default"]) == (1, 1000, 100)
    assert set(listed["include_saved"]["schema"]["enum"]) == {"true", "false", "1", "0"}
    assert listed["include_saved"]["schema"]["default"] == "true"
    for name in ("status", "user_id", "cursor"):
        assert listed[name]["schema"]["type"] == "string", name


# (request, documented operation path): the status the server gives must be in the document.
OBSERVED = [
    ("/api/v2/jobs/a", "/api/v2/jobs/{job_id}"),
    ("/api/v2/jobs/nope", "/api/v2/jobs/{job_id}"),
    ("/api/v2/jobs/..%2Fx", "/api/v2/jobs/{job_id}"),
    ("/api/v2/jobs?limit=1", "/api/v2/jobs"),
    ("/api/v2/jobs?limit=1000", "/api/v2/jobs"),
    ("/api/v2/jobs?limit=1001", "/api/v2/jobs"),
    ("/api/v2/jobs?limit=0", "/api/v2/jobs"),
    ("/api/v2/jobs?include_saved=maybe", "/api/v2/jobs"),
    ("/api/v2/jobs?cursor=garbage", "/api/v2/jobs"),
    ("/livez", "/livez"),
    ("/healthz", "/healthz"),
    ("/readyz", "/readyz"),
    ("/metrics", "/metrics"),
    ("/openapi.json", "/openapi.json"),
]


@pytest.mark.parametrize(("target", "path"), OBSERVED)
def test_the_statuses_the_server_gives_are_documented(
    sessions_dir: Path, serve: Callable[..., Server], target: str, path: str
) -> None:
    put_session(sessions_dir, "a")
    server = serve(sessions_dir)
    document = server.get("/openapi.json").json()
    response = server.raw("GET", target)
    assert str(response.status_code) in document["paths"][path]["get"]["responses"], (target, response.status_code)
    limit = parameters(document, "/api/v2/jobs")["limit"]["schema"]
    if "limit=" in target:
        value = int(target.rpartition("=")[2])
        in_range = limit["minimum"] <= value <= limit["maximum"]
        assert (response.status_code == 200) == in_range, (target, response.status_code)


def test_a_304_is_documented_and_given(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    put_session(sessions_dir, "a")
    server = serve(sessions_dir)
    etag = server.get("/api/v2/jobs/a").headers["etag"]
    assert server.get("/api/v2/jobs/a", headers={"If-None-Match": etag}).status_code == 304
    document = server.get("/openapi.json").json()
    assert "304" in document["paths"]["/api/v2/jobs/{job_id}"]["get"]["responses"]


def test_the_api_is_documented_as_bearer_protected_and_probes_open(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    bearer = [name for name, scheme in schemes.items() if scheme == {"type": "http", "scheme": "bearer"}]
    assert bearer
    for path, item in document["paths"].items():
        security = item["get"].get("security", [])
        if path.startswith("/api/"):
            assert {bearer[0]: []} in security, path
            assert "401" in item["get"]["responses"], path
        else:
            assert all(requirement == {} for requirement in security), path


def test_head_of_the_document_has_no_body(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    server = serve(sessions_dir)
    response = server.client.head("/openapi.json")
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["content-length"]) == len(server.get("/openapi.json").content)


def test_a_route_without_a_documented_operation_fails_the_build() -> None:
    with pytest.raises(KeyError):
        build_openapi([Route("/undocumented", lambda request: None)])
