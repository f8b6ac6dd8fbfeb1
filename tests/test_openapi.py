"""GET /openapi.json: a valid OpenAPI 3 document of every route the application has, generated
from the code, whose limits are the ones the handlers enforce."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from app import __version__
from app.api.application import create_app
from app.api.openapi import build_openapi
from app.api.problems import PROBLEMS
from app.api.problemtypes import PROBLEM_TYPES
from app.api.routes import PAGE_PATHS, route_template
from app.settings import load_settings
from tests.support import REPO, Server, put_session, start_server

SPEC_JOB_ID = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # docs/contract.md#files


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server, without a token, for the tests that only read; long polls are capped at one
    second (the document does not depend on settings)."""
    folder = tmp_path_factory.mktemp("sessions")
    put_session(folder, "a")
    server = start_server(folder, tmp_path_factory.mktemp("logs"), env={"SESSIONS_MAX_WAIT_S": "1"})
    yield server
    server.stop()


@pytest.fixture
def document(shared: Server) -> dict[str, Any]:
    response = shared.get("/openapi.json")
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
        # GET only: HEAD is served for every GET (the descriptions say so), but a declared HEAD
        # becomes a twin function in every generated client.
        assert set(item) == {"get"}, path
        operation = item["get"]
        operation_ids.append(operation["operationId"])
        assert operation.get("summary"), path
        assert "HEAD is served" in operation.get("description", operation["summary"]), path
        assert "200" in operation["responses"], path
        for status, response in operation["responses"].items():
            assert response.get("description"), (path, status)
            assert "X-Request-ID" in response["headers"], (path, status)
            if status.startswith(("4", "5")) and path.startswith("/api/"):
                assert "application/problem+json" in response["content"], (path, status)
    assert len(operation_ids) == len(set(operation_ids))


def test_no_parameter_declares_a_default(document: dict[str, Any]) -> None:
    """Generated clients send declared defaults: a watch=True call would also send limit=100
    and get a 400. The defaults are told in the descriptions instead."""
    for path, item in document["paths"].items():
        for parameter in item["get"].get("parameters", []):
            assert "default" not in parameter["schema"], (path, parameter["name"])
    assert not list(keys_named(document["components"], "default"))


def keys_named(value: object, name: str) -> Iterator[object]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == name:
                yield item
            yield from keys_named(item, name)
    elif isinstance(value, list):
        for item in value:
            yield from keys_named(item, name)


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
        "X-Request-ID",
    }
    limit = listed["limit"]
    assert limit["in"] == "query" and not limit["required"]
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000}
    assert "Absent: 100" in limit["description"]
    for name in ("include_saved", "watch"):
        assert listed[name]["schema"] == {"type": "boolean"}, name
    assert "Absent: true" in listed["include_saved"]["description"]
    status = listed["status"]
    assert status["schema"]["type"] == "array" and status["schema"]["items"] == {"type": "string"}
    assert (status.get("style", "form"), status.get("explode", True)) == ("form", True)  # status=a&status=b
    for name in ("user_id", "cursor"):
        assert listed[name]["schema"]["type"] == "string", name
    assert parameters(document, "/api/v2/jobs/{job_id}")["watch"]["schema"] == {"type": "boolean"}


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
def test_the_statuses_the_server_gives_are_documented(shared: Server, target: str, path: str) -> None:
    server = shared
    document = server.get("/openapi.json").json()
    response = server.raw("GET", target)
    assert str(response.status_code) in document["paths"][path]["get"]["responses"], (target, response.status_code)
    limit = parameters(document, "/api/v2/jobs")["limit"]["schema"]
    if "limit=" in target:
        value = int(target.rpartition("=")[2])
        in_range = limit["minimum"] <= value <= limit["maximum"]
        assert (response.status_code == 200) == in_range, (target, response.status_code)


def test_a_304_is_documented_and_given(shared: Server) -> None:
    server = shared
    etag = server.get("/api/v2/jobs/a").headers["etag"]
    assert server.get("/api/v2/jobs/a", headers={"If-None-Match": etag}).status_code == 304
    document = server.get("/openapi.json").json()
    assert "304" in document["paths"]["/api/v2/jobs/{job_id}"]["get"]["responses"]


def test_without_a_token_no_security_is_declared(document: dict[str, Any]) -> None:
    """A generator would otherwise demand an authenticated client that nothing needs."""
    assert "securitySchemes" not in document["components"]
    assert "security" not in document
    for path, item in document["paths"].items():
        assert "security" not in item["get"], path
        assert "401" not in item["get"]["responses"], path


def token_document(sessions_dir: Path) -> dict[str, Any]:
    """The document a service with a token serves (in-process: only the document is wanted)."""
    app = create_app(load_settings({"SESSIONS_DIR": str(sessions_dir), "SESSIONS_API_TOKEN": "t0ken"}))

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.get("/openapi.json")

    response = asyncio.run(get())
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_with_a_token_the_api_declares_bearer_or_the_access_token_parameter(sessions_dir: Path) -> None:
    document = token_document(sessions_dir)
    validate(document)
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer"}
    assert {key: schemes["access_token"][key] for key in ("type", "in", "name")} == {
        "type": "apiKey",
        "in": "query",
        "name": "access_token",
    }
    for path, item in document["paths"].items():
        operation = item["get"]
        if path.startswith("/api/"):
            # Alternatives: either one satisfies the requirement.
            assert operation["security"] == [{"bearer": []}, {"access_token": []}], path
            unauthorized = operation["responses"]["401"]
            assert "WWW-Authenticate" in unauthorized["headers"], path
        else:
            assert "security" not in operation and "401" not in operation["responses"], path
    assert "security" not in document  # probes, metrics, the document and problem pages stay open


def test_head_of_the_document_has_no_body(shared: Server) -> None:
    server = shared
    response = server.client.head("/openapi.json")
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["content-length"]) == len(server.get("/openapi.json").content)


def test_a_route_without_a_documented_operation_fails_the_build() -> None:
    with pytest.raises(KeyError):
        build_openapi([Route("/undocumented", lambda request: None)])


# Headers every HTTP server sends, or that describe the body: not the API's to declare.
TRANSPORT_HEADERS = {"content-type", "content-length", "date", "server", "transfer-encoding", "connection"}


def declared_headers(document: dict[str, Any], path: str, status: int) -> set[str]:
    response = document["paths"][path]["get"]["responses"][str(status)]
    return {name.lower() for name in response.get("headers", {})}


def test_every_header_the_service_sends_is_declared(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    put_session(sessions_dir, "a")
    put_session(sessions_dir, "b")
    (sessions_dir / "broken.json").write_bytes(b"[]")
    server = serve(sessions_dir, env={"SESSIONS_MAX_STREAMS": "0"})  # every watch and long poll: a 503
    document = server.get("/openapi.json").json()
    etag = server.get("/api/v2/jobs/a").headers["etag"]
    requests: list[tuple[str, dict[str, str], str, int]] = [
        ("/api/v2/jobs/a", {}, "/api/v2/jobs/{job_id}", 200),
        ("/api/v2/jobs/a", {"If-None-Match": etag}, "/api/v2/jobs/{job_id}", 304),
        ("/api/v2/jobs/a", {"If-None-Match": etag, "Prefer": "wait=5"}, "/api/v2/jobs/{job_id}", 503),
        ("/api/v2/jobs/a?watch=true", {}, "/api/v2/jobs/{job_id}", 503),
        ("/api/v2/jobs/-a", {}, "/api/v2/jobs/{job_id}", 400),
        ("/api/v2/jobs/nope", {}, "/api/v2/jobs/{job_id}", 404),
        ("/api/v2/jobs/broken", {}, "/api/v2/jobs/{job_id}", 404),
        ("/api/v2/jobs?limit=1", {}, "/api/v2/jobs", 200),
        ("/api/v2/jobs?limit=0", {}, "/api/v2/jobs", 400),
        ("/api/v2/jobs?watch=true", {}, "/api/v2/jobs", 503),
        ("/api/v2/jobs?watch=true&revision=other", {}, "/api/v2/jobs", 410),
        ("/livez", {}, "/livez", 200),
        ("/readyz", {}, "/readyz", 200),
        ("/metrics", {}, "/metrics", 200),
        ("/openapi.json", {}, "/openapi.json", 200),
        ("/problems/bad-request", {}, "/problems/{name}", 200),
        ("/problems/nope", {}, "/problems/{name}", 404),
    ]
    for target, headers, path, status in requests:
        response = server.get(target, headers=headers)
        assert response.status_code == status, (target, response.status_code, response.text)
        sent = set(response.headers) - TRANSPORT_HEADERS
        assert sent <= declared_headers(document, path, status), (target, sent)
        for name, header in document["paths"][path]["get"]["responses"][str(status)].get("headers", {}).items():
            if "$ref" in header:
                header = document["components"]["headers"][header["$ref"].rpartition("/")[2]]
            if header.get("required"):
                assert name.lower() in response.headers, (target, name)


def test_every_header_of_a_stream_and_a_long_poll_is_declared(shared: Server) -> None:
    server = shared
    document = server.get("/openapi.json").json()
    etag = server.get("/api/v2/jobs/a").headers["etag"]
    waited = server.get("/api/v2/jobs/a", headers={"If-None-Match": etag, "Prefer": "wait=1"})
    assert waited.status_code == 304 and waited.headers["preference-applied"] == "wait=1"
    assert set(waited.headers) - TRANSPORT_HEADERS <= declared_headers(document, "/api/v2/jobs/{job_id}", 304)
    for target, path in [("/api/v2/jobs?watch=true", "/api/v2/jobs"), ("/api/v2/jobs/a?watch=1", JOB_PATH)]:
        for accept in ("application/x-ndjson", "text/event-stream"):
            response = server.client.head(target, headers={"Accept": accept})  # a stream's head, no stream
            assert response.status_code == 200, (target, response.status_code)
            assert response.headers["content-type"].startswith(accept)
            assert set(response.headers) - TRANSPORT_HEADERS <= declared_headers(document, path, 200), target


def test_head_is_served_for_every_documented_get(shared: Server) -> None:
    server = shared
    document = server.get("/openapi.json").json()
    targets = {JOB_PATH: "/api/v2/jobs/a", "/problems/{name}": "/problems/bad-request"}
    for path in document["paths"]:
        target = targets.get(path, path)
        response = server.client.head(target)
        assert (response.status_code, response.content) == (200, b""), path
        assert response.headers["content-length"] == str(len(server.get(target).content)) or path == "/metrics"


JOB_PATH = "/api/v2/jobs/{job_id}"


def problem_types_in_the_source() -> set[str]:
    """Every `/problems/<name>` the service's code can put in a problem's type."""
    found: set[str] = set()
    for source in (REPO / "app").rglob("*.py"):
        found |= set(re.findall(r"\"(/problems/[a-z-]+)\"", source.read_text()))
    return found


def test_every_problem_type_resolves_to_a_page_describing_it(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    used = problem_types_in_the_source()
    assert "/problems/session-not-found" in used and "/problems/stream-fell-behind" in used
    titles = {row.type: (row.title, row.status) for row in PROBLEMS.values() if row.type != "about:blank"}
    assert set(titles) == used  # the code's types are the table's
    server = serve(sessions_dir, env={"SESSIONS_API_TOKEN": "t0ken"})  # the pages need no token
    for type_ in sorted(used):
        response = server.get(type_)  # as a client resolves the relative reference
        assert response.status_code == 200, type_
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        title, status = titles[type_]
        assert f"<h1>{html.escape(title)}</h1>" in response.text
        assert f"HTTP status {status}." in response.text
        described = PROBLEM_TYPES[type_.removeprefix("/problems/")]
        assert html.escape(described.meaning) in response.text and html.escape(described.action) in response.text
    assert set(PROBLEM_TYPES) == {type_.removeprefix("/problems/") for type_ in used}  # no page for nothing
    missing = server.get("/problems/no-such-type")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    # A problem as the API gives it: its type, resolved against the request's URL, is its page.
    problem = server.get("/api/v2/jobs/nope", headers={"Authorization": "Bearer t0ken"})
    page = server.get(urljoin(str(problem.url), problem.json()["type"]))
    assert page.status_code == 200 and "Session not found" in page.text


def test_problem_pages_have_their_own_metric_label() -> None:
    assert route_template("/problems/bad-request") == "/problems/{name}"
    assert route_template("/problems/anything-else") == "/problems/{name}"
