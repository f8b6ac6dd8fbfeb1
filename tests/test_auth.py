"""Token auth: SESSIONS_API_TOKEN or SESSIONS_API_TOKEN_FILE (a mounted secret, usually ending in a
newline); /api/ needs `Authorization: Bearer <token>`, probes, metrics and the OpenAPI document
stay open."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.support import REPO, Server, free_port, put_session, server_env, start_server
from tests.support.ops import JOB_ROUTE, wait_for_scrape

TOKEN = "s3cret-Token_0123456789"
API_PATHS = ["/api/v2/jobs/a", "/api/v2/jobs", "/api/v2/jobs/", "/api/v2/jobs?status=running&limit=5"]
OPEN_PATHS = ["/livez", "/healthz", "/readyz", "/metrics", "/openapi.json"]

# How the token reaches the service: (variable, file content or None for the variable itself)
SOURCES = [
    ("SESSIONS_API_TOKEN", None),
    ("SESSIONS_API_TOKEN_FILE", TOKEN + "\n"),  # a Kubernetes secret's trailing newline
    ("SESSIONS_API_TOKEN_FILE", TOKEN),
    ("SESSIONS_API_TOKEN_FILE", TOKEN + "\r\n"),  # written on Windows
]

WRONG = [
    f"Bearer {TOKEN}x",
    f"Bearer {TOKEN[:-1]}",
    "Bearer wrong",
    "Bearer ",
    "Bearer",
    TOKEN,
    f"Basic {TOKEN}",
    f"Token {TOKEN}",
    f"Bearer {TOKEN.upper()}",
    "Bearer ünïcode",
    f"Bearer {'x' * 4000}",
]


def token_env(tmp_path: Path, variable: str, content: str | None) -> dict[str, str]:
    if content is None:
        return {variable: TOKEN}
    token_file = tmp_path / "token"
    token_file.write_bytes(content.encode())
    return {variable: str(token_file)}


# The tests that only read share a server per way of giving the token; each is stopped when the
# module is done.
Source = tuple[str, str | None]


@pytest.fixture(scope="module")
def server_for(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Source], Server]]:
    """The real server over a folder holding "a", with the token given as `source` says: one
    server per source, started when a test first asks for it."""
    folder = tmp_path_factory.mktemp("sessions")
    put_session(folder, "a")
    logs = tmp_path_factory.mktemp("logs")
    servers: dict[Source, Server] = {}

    def get(source: Source) -> Server:
        if source not in servers:
            env = token_env(tmp_path_factory.mktemp("token"), *source)
            servers[source] = start_server(folder, logs, env=env)
        return servers[source]

    yield get
    for server in servers.values():
        server.stop()


@pytest.fixture
def guarded(server_for: Callable[[Source], Server]) -> Server:
    return server_for(("SESSIONS_API_TOKEN", None))


@pytest.mark.parametrize(("variable", "content"), SOURCES)
def test_the_right_token_opens_the_api(
    server_for: Callable[[Source], Server], variable: str, content: str | None
) -> None:
    server = server_for((variable, content))
    for path in API_PATHS:
        assert server.get(path).status_code == 401, path
        for scheme in ("Bearer", "bearer", "BEARER"):
            response = server.raw("GET", path, headers={"Authorization": f"{scheme} {TOKEN}"})
            assert response.status_code == 200, (path, scheme)
    head = server.client.head("/api/v2/jobs/a", headers={"Authorization": f"Bearer {TOKEN}"})
    assert head.status_code == 200


@pytest.mark.parametrize("path", API_PATHS)
def test_a_missing_token_is_401_with_a_bearer_challenge(guarded: Server, path: str) -> None:
    response = guarded.raw("GET", path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"] == "application/problem+json"
    problem = orjson.loads(response.content)
    assert problem["status"] == 401
    assert {"type", "title", "status", "detail"} <= problem.keys()
    assert "x-request-id" in response.headers
    assert b"user-1" not in response.content  # nothing of the document


@pytest.mark.parametrize("authorization", WRONG)
def test_a_wrong_token_is_401(guarded: Server, authorization: str) -> None:
    for path in API_PATHS[:2]:
        response = guarded.raw("GET", path, headers={"Authorization": authorization})
        assert response.status_code == 401, (path, authorization)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert b"job_id" not in response.content


@pytest.mark.parametrize("path", OPEN_PATHS)
def test_probes_metrics_and_openapi_need_no_token(guarded: Server, path: str) -> None:
    assert guarded.get(path).status_code == 200
    # a wrong token there is ignored, not refused
    assert guarded.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 200


@pytest.mark.parametrize("path", ["/api/v2/jobs/..%2F..%2Fetc%2Fpasswd", "/api/v2/jobs/nope", "/api/v1/other"])
def test_the_token_is_checked_before_anything_else_under_api(guarded: Server, path: str) -> None:
    """Without the token nothing under /api/ tells what exists or what is valid."""
    assert guarded.raw("GET", path).status_code == 401


def test_refusals_are_counted_under_the_route_template(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    # A server of its own: the refusals of the other tests would move its counter.
    put_session(sessions_dir, "a")
    guarded = serve(sessions_dir, env={"SESSIONS_API_TOKEN": TOKEN})
    for _ in range(3):
        assert guarded.get("/api/v2/jobs/a").status_code == 401
    wait_for_scrape(
        guarded,
        lambda s: s.value("sessions_http_requests_total", route=JOB_ROUTE, method="GET", status="401") == 3,
        what="three refusals",
    )


def test_no_token_set_leaves_the_api_open(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    put_session(sessions_dir, "a")
    server = serve(sessions_dir)
    assert server.get("/api/v2/jobs/a").status_code == 200
    assert server.get("/api/v2/jobs/a", headers={"Authorization": "Bearer anything"}).status_code == 200


def start_failing(sessions_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=REPO,
        env=server_env(sessions_dir, env),
        capture_output=True,
        text=True,
        timeout=60,
    )


# (environment, variable the error names); files are made in tmp_path
BAD_SETTINGS = [
    ({"SESSIONS_API_TOKEN": TOKEN, "SESSIONS_API_TOKEN_FILE": "{token}"}, "SESSIONS_API_TOKEN"),
    ({"SESSIONS_API_TOKEN_FILE": "{missing}"}, "SESSIONS_API_TOKEN_FILE"),
    ({"SESSIONS_API_TOKEN_FILE": "{empty}"}, "SESSIONS_API_TOKEN_FILE"),
    ({"SESSIONS_API_TOKEN": "   "}, "SESSIONS_API_TOKEN"),
]


@pytest.mark.parametrize(("env", "variable"), BAD_SETTINGS)
def test_a_bad_token_setting_exits_2_before_listening(
    sessions_dir: Path, tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "empty").write_text("\n")
    files = {"token": tmp_path / "token", "missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    result = start_failing(sessions_dir, {key: value.format(**files) for key, value in env.items()})
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert TOKEN not in result.stderr + result.stdout  # the secret is never printed
