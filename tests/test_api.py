"""The HTTP API (docs/contract.md#http-api), through the real server on a loopback port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest

from tests.support import (
    RawResponse,
    Server,
    encode,
    put_session,
    session_doc,
    start_server,
    wait_until,
    write_atomic,
)

PROBLEM = "application/problem+json"


def fill(sessions_dir: Path) -> Path:
    put_session(sessions_dir, "a1", status="running", user_id="ann", updated_at="2024-05-01T10:00:00Z")
    put_session(sessions_dir, "b2", status="completed", user_id="bob", updated_at="2024-05-01T12:00:00+02:00")
    put_session(sessions_dir, "c3", status="pending_hitl", user_id="ann", updated_at="2024-05-01T11:00:00Z")
    put_session(sessions_dir, "d4", status="failed", user_id="bob", updated_at="2024-05-01T11:00:00Z")
    put_session(sessions_dir, "e5", status="weird_custom", user_id="cy", updated_at="2024-04-01T00:00:00Z")
    put_session(sessions_dir, "f6", status="cancelled", user_id="ann", updated_at="2024-03-01T00:00:00.5Z")
    return sessions_dir


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The six sessions, and two files that never were valid sessions (neither is listed)."""
    folder = fill(tmp_path_factory.mktemp("sessions"))
    (folder / "broken.json").write_bytes(b"[1, 2]")
    (folder / "liar.json").write_bytes(encode(session_doc("someone-else")))
    return folder


@pytest.fixture(scope="module")
def server(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that only read: they must not change `folder`."""
    server = start_server(folder, tmp_path_factory.mktemp("logs"))
    yield server
    server.stop()


def assert_problem(response: httpx.Response | RawResponse, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = orjson.loads(response.content)
    assert set(body) >= {"type", "title", "status", "detail"}
    assert body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"]
    return body  # type: ignore[no-any-return]


# --- one job -------------------------------------------------------------------------------------


def test_get_serves_the_document_as_written(folder: Path, server: Server) -> None:
    response = server.get("/api/v2/jobs/a1")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == (folder / "a1.json").read_bytes()
    assert response.headers["cache-control"] == "no-cache"
    etag = response.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert "x-session-stale" not in response.headers


def test_etag_and_conditional_get(server: Server) -> None:
    etag = server.get("/api/v2/jobs/a1").headers["etag"]
    for value in [etag, f'"nope", {etag}', f"W/{etag}", "*"]:
        response = server.get("/api/v2/jobs/a1", headers={"If-None-Match": value})
        assert response.status_code == 304, value
        assert response.content == b""
        assert response.headers["etag"] == etag
    assert server.get("/api/v2/jobs/a1", headers={"If-None-Match": '"other"'}).status_code == 200
    assert server.get("/api/v2/jobs/b2").headers["etag"] != etag


def test_head(server: Server) -> None:
    get = server.get("/api/v2/jobs/a1")
    head = server.client.head("/api/v2/jobs/a1")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["etag"] == get.headers["etag"]
    assert head.headers["content-length"] == str(len(get.content))
    assert server.client.head("/api/v2/jobs").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/api/v2/jobs/..",
        "/api/v2/jobs/%2e%2e",
        "/api/v2/jobs/%2E%2E%2Fsecret",
        "/api/v2/jobs/a%2Fb",
        "/api/v2/jobs/a/b",
        "/api/v2/jobs/a1/",
        "/api/v2/jobs/.hidden",
        "/api/v2/jobs/-x",
        "/api/v2/jobs/a%00b",
        "/api/v2/jobs/%C3%A9",
        "/api/v2/jobs/%ff",
        "/api/v2/jobs/a%20b",
        "/api/v2/jobs/" + "x" * 129,
        "/api/v2/jobs/" + "x" * 5000,
        "/api/v2/jobs//etc/passwd",
        "/api/v2/jobs/a1.json%2F..%2F..%2Fetc",
    ],
)
def test_bad_job_ids_are_400(server: Server, path: str) -> None:
    response = server.raw("GET", path)
    body = assert_problem(response, 400)
    assert len(str(body["detail"])) < 400  # never echoes a huge input back


def test_unknown_job_is_404(server: Server) -> None:
    body = assert_problem(server.get("/api/v2/jobs/nope"), 404)
    assert "nope" in str(body["detail"])
    assert_problem(server.get("/no/such/route"), 404)


def test_never_valid_file_is_404_with_reason(server: Server) -> None:
    assert "not a JSON object" in str(assert_problem(server.get("/api/v2/jobs/broken"), 404)["detail"])
    assert "does not match" in str(assert_problem(server.get("/api/v2/jobs/liar"), 404)["detail"])
    listed = [item["job_id"] for item in server.get("/api/v2/jobs").json()]
    assert "broken" not in listed and "liar" not in listed


def test_other_methods_are_405(server: Server) -> None:
    response = server.client.post("/api/v2/jobs/a1")
    assert_problem(response, 405)
    assert "GET" in response.headers["allow"]
    assert_problem(server.client.delete("/api/v2/jobs"), 405)
    for path in ["/livez", "/healthz", "/readyz", "/metrics", "/openapi.json"]:
        for method in ["POST", "PUT", "DELETE", "PATCH"]:
            response = server.client.request(method, path)
            assert_problem(response, 405)
            assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}, (method, path)
        assert server.client.head(path).status_code == 200, path


# --- the list ------------------------------------------------------------------------------------


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["job_id"] for item in response.json()]


def test_list_order_summaries_and_headers(server: Server) -> None:
    response = server.get("/api/v2/jobs")
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-total-count"] == "6"
    assert "link" not in response.headers
    # b2 is 10:00Z (12:00+02:00): offsets honoured; c3 and d4 tie and order by job id
    assert ids(response) == ["c3", "d4", "a1", "b2", "e5", "f6"]
    first = response.json()[0]
    assert first == {
        "job_id": "c3",
        "status": "pending_hitl",
        "user_id": "ann",
        "created_at": "2024-05-01T11:00:00Z",
        "updated_at": "2024-05-01T11:00:00Z",
    }


def test_list_with_and_without_trailing_slash_without_redirect(server: Server) -> None:
    slash = server.get("/api/v2/jobs/")
    assert slash.status_code == 200
    assert ids(slash) == ids(server.get("/api/v2/jobs"))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=running", ["a1"]),
        ("status=running,failed", ["d4", "a1"]),
        ("status=running&status=failed", ["d4", "a1"]),
        ("status=weird_custom", ["e5"]),
        ("status=nothing", []),
        ("user_id=ann", ["c3", "a1", "f6"]),
        ("user_id=ann&status=cancelled", ["f6"]),
        ("include_saved=false", ["c3", "a1", "e5"]),
        ("include_saved=0", ["c3", "a1", "e5"]),
        ("include_saved=No", ["c3", "a1", "e5"]),
        ("include_saved=YES", ["c3", "d4", "a1", "b2", "e5", "f6"]),
        ("include_saved=true", ["c3", "d4", "a1", "b2", "e5", "f6"]),
        ("include_saved=1&user_id=bob", ["d4", "b2"]),
        ("include_saved=false&user_id=bob", []),
        ("include_saved=false&status=completed,running", ["a1"]),
        ("user_id=nobody", []),
    ],
)
def test_list_filters(server: Server, query: str, expected: list[str]) -> None:
    response = server.get(f"/api/v2/jobs?{query}")
    assert ids(response) == expected
    assert response.headers["x-total-count"] == str(len(expected))


def test_keyset_pages_follow_links(server: Server) -> None:
    seen: list[str] = []
    url = "/api/v2/jobs?limit=2&user_id=ann&include_saved=true"
    for _ in range(10):
        response = server.get(url)
        assert response.headers["x-total-count"] == "3"
        seen.extend(ids(response))
        link = response.headers.get("link")
        if link is None:
            break
        assert link.endswith('>; rel="next"')
        url = link[1 : link.index(">")]
        params = parse_qs(urlsplit(url).query)
        assert params["user_id"] == ["ann"] and params["limit"] == ["2"]
    assert seen == ["c3", "a1", "f6"]


def test_pages_are_stable_while_sessions_change(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    folder = fill(sessions_dir)
    server = serve(folder)
    first = server.get("/api/v2/jobs?limit=3")
    assert ids(first) == ["c3", "d4", "a1"]
    # a session that sorts before the cursor appears: the next page neither repeats nor skips
    write_atomic(folder / "z9.json", encode(session_doc("z9", updated_at="2030-01-01T00:00:00Z")))
    wait_until(lambda: server.get("/api/v2/jobs?limit=1").headers["x-total-count"] == "7", 10, what="z9 applied")
    link = first.headers["link"]
    rest = server.get(link[1 : link.index(">")])
    assert ids(rest) == ["b2", "e5", "f6"]


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "limit=1.5",
        "limit=",
        "limit=99999999999999999999",
        "cursor=garbage",
        "cursor=",
        "cursor=W10",  # base64 of []
        "cursor=WzEsIi4uIl0",  # [1, ".."]
        "cursor=%ff%fe",
        "include_saved=maybe",
        "include_saved=",
        "include_saved=TRUE1",
        "status=%ff",
        "user_id=",  # not "every user's": a client that forgot to fill it in
    ],
)
def test_bad_list_parameters_are_400(server: Server, query: str) -> None:
    assert_problem(server.get(f"/api/v2/jobs?{query}"), 400)


def test_limit_bounds(server: Server) -> None:
    assert len(ids(server.get("/api/v2/jobs?limit=1"))) == 1
    assert len(ids(server.get("/api/v2/jobs?limit=1000"))) == 6


# --- probes --------------------------------------------------------------------------------------


def test_probes(server: Server) -> None:
    for path in ["/livez", "/healthz"]:
        response = server.get(path)
        assert response.status_code == 200 and response.json() == {"status": "ok"}
    ready = server.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["sessions"] == 6
