"""What browsers need over plain HTTP (docs/browsers.md): CORS, off unless SESSIONS_CORS_ORIGINS
lists origins, and the RFC 6750 `access_token` query parameter, accepted on GET and HEAD where a
token is set, and never written to any log. One real server per configuration, shared by the
module's read-only tests."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.api.application import create_app
from app.api.middleware import take_access_token
from app.settings import SettingsError, load_settings
from tests.support import Server, put_session, start_server, wait_until

TOKEN = "s3cret-Token_0123456789"
PAGE = "http://page.example:8080"
OTHER = "https://other.example"
REQUEST_HEADERS = ("Authorization", "If-None-Match", "Prefer", "Last-Event-ID", "X-Request-ID")
EXPOSED = (
    *("ETag", "X-Revision", "X-Total-Count", "Link", "X-Request-ID"),
    *("X-Session-Stale", "Preference-Applied", "Retry-After"),
)


def _start(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Server:
    folder = tmp_path_factory.mktemp("sessions")
    for n in range(3):
        put_session(folder, f"job-{n}", updated_at=f"2024-05-01T12:00:0{n}Z")
    return start_server(folder, tmp_path_factory.mktemp("logs"), env=env)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """CORS for two origins, a token, and every log line there is (debug)."""
    env = {
        "SESSIONS_API_TOKEN": TOKEN,
        "SESSIONS_CORS_ORIGINS": f"{PAGE}, {OTHER}",
        "SESSIONS_LOG_LEVEL": "debug",
    }
    server = _start(tmp_path_factory, env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The defaults: no CORS, no token."""
    server = _start(tmp_path_factory, {})
    yield server
    server.stop()


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def _listed(value: str | None) -> set[str]:
    return {part.strip().lower() for part in (value or "").split(",") if part.strip()}


# --- CORS -----------------------------------------------------------------------------------------


def test_cors_is_off_by_default(plain: Server) -> None:
    preflight = plain.client.options(
        "/api/v2/jobs/job-0", headers={"Origin": PAGE, "Access-Control-Request-Method": "GET"}
    )
    assert preflight.status_code == 405
    response = plain.get("/api/v2/jobs/job-0", headers={"Origin": PAGE})
    assert response.status_code == 200
    assert not any(name.startswith("access-control-") for name in response.headers)


@pytest.mark.parametrize("path", ["/api/v2/jobs/job-0", "/api/v2/jobs?watch=true", "/api/v2/jobs/nope", "/livez"])
def test_a_preflight_from_a_listed_origin_is_a_204_without_the_token(guarded: Server, path: str) -> None:
    response = guarded.client.options(
        path,
        headers={
            "Origin": PAGE,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization,last-event-id",
        },
    )
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["access-control-allow-origin"] == PAGE
    assert _listed(response.headers["access-control-allow-methods"]) == {"get", "head"}
    assert _listed(response.headers["access-control-allow-headers"]) >= {name.lower() for name in REQUEST_HEADERS}
    assert int(response.headers["access-control-max-age"]) > 0
    assert "origin" in _listed(response.headers["vary"])


def test_a_preflight_from_another_origin_is_refused(guarded: Server) -> None:
    response = guarded.client.options(
        "/api/v2/jobs", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("origin", [PAGE, OTHER])
def test_a_listed_origin_may_read_answers_and_their_headers(guarded: Server, origin: str) -> None:
    response = guarded.get("/api/v2/jobs?limit=1", headers={"Origin": origin, **_auth()})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    assert _listed(response.headers["access-control-expose-headers"]) == {name.lower() for name in EXPOSED}
    assert "origin" in _listed(response.headers["vary"])
    # and a refusal too: the page must be able to tell a 401 from a network failure
    refused = guarded.get("/api/v2/jobs/job-0", headers={"Origin": origin})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == origin


def test_an_unlisted_origin_gets_no_cors_headers_and_every_answer_varies_on_origin(guarded: Server) -> None:
    other = guarded.get("/api/v2/jobs/job-0", headers={"Origin": "http://evil.example", **_auth()})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers
    assert "origin" in _listed(other.headers["vary"])
    without = guarded.get("/api/v2/jobs/job-0", headers=_auth())  # a cache may keep it for anyone
    assert "origin" in _listed(without.headers["vary"])
    assert "access-control-allow-origin" not in without.headers


def test_a_stream_varies_on_accept_and_origin(guarded: Server) -> None:
    headers = {"Origin": PAGE, "Accept": "text/event-stream", **_auth()}
    with guarded.client.stream("GET", "/api/v2/jobs?watch=true", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == PAGE
        assert {"accept", "origin"} <= _listed(", ".join(response.headers.get_list("vary")))


def test_any_origin_with_a_star(tmp_path: Path) -> None:
    app = create_app(load_settings({"SESSIONS_DIR": str(tmp_path), "SESSIONS_CORS_ORIGINS": "*"}))

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)  # /livez needs no lifespan: in process
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get("/livez", headers={"Origin": "http://anywhere.example"})
            assert response.status_code == 200
            assert response.headers["access-control-allow-origin"] == "*"
            assert response.headers.get_list("vary") == ["Origin"]
            preflight = await client.options(
                "/livez", headers={"Origin": "http://anywhere.example", "Access-Control-Request-Method": "GET"}
            )
            assert preflight.status_code == 204
            assert preflight.headers["access-control-allow-origin"] == "*"
            # OPTIONS without Access-Control-Request-Method is no preflight: the app answers it
            not_preflight = await client.options("/livez", headers={"Origin": "http://anywhere.example"})
            assert not_preflight.status_code == 405
            assert not_preflight.headers["access-control-allow-origin"] == "*"

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("raw", "origins"),
    [
        ("", ()),
        ("*", ("*",)),
        (" http://a.example ,https://B.example:8443,http://a.example", ("http://a.example", "https://b.example:8443")),
        ("http://[::1]:3000", ("http://[::1]:3000",)),
    ],
)
def test_cors_origins_setting(tmp_path: Path, raw: str, origins: tuple[str, ...]) -> None:
    settings = load_settings({"SESSIONS_DIR": str(tmp_path), "SESSIONS_CORS_ORIGINS": raw})
    assert settings.cors_origins == origins


@pytest.mark.parametrize("raw", ["http://a.example/", "http://a.example/page", "a.example", "*, http://a.example"])
def test_a_bad_cors_origin_is_a_settings_error(tmp_path: Path, raw: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"SESSIONS_DIR": str(tmp_path), "SESSIONS_CORS_ORIGINS": raw})
    assert raised.value.variable == "SESSIONS_CORS_ORIGINS"


# --- access_token ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "token", "rest"),
    [
        (b"access_token=abc", b"abc", b""),
        (b"watch=true&access_token=a%2Bb%3D&status=x", b"a+b=", b"watch=true&status=x"),
        (b"access_token=a+b", b"a b", b""),
        (b"access_tokens=abc", None, b"access_tokens=abc"),
        (b"access_token=a&access_token=a", b"", b""),  # twice: matches no token
    ],
)
def test_take_access_token(query: bytes, token: bytes | None, rest: bytes) -> None:
    assert take_access_token(query) == (token, rest)


@pytest.mark.parametrize(
    "target",
    [
        f"/api/v2/jobs/job-0?access_token={TOKEN}",
        f"/api/v2/jobs?access_token={TOKEN}&status=running",
        f"/api/v2/jobs/?status=running&access_token={TOKEN}",
        "/api/v2/jobs/job-0?access_token=" + "".join(f"%{byte:02X}" for byte in TOKEN.encode()),
    ],
)
def test_the_access_token_parameter_opens_get_and_head(guarded: Server, target: str) -> None:
    assert guarded.raw("GET", target).status_code == 200
    assert guarded.raw("HEAD", target).status_code == 200


@pytest.mark.parametrize(
    "target",
    [
        f"/api/v2/jobs/job-0?access_token={TOKEN}x",
        f"/api/v2/jobs/job-0?access_token={TOKEN[:-1]}",
        "/api/v2/jobs/job-0?access_token=",
        f"/api/v2/jobs/job-0?access_token={TOKEN}&access_token={TOKEN}",
        f"/api/v2/jobs/job-0?access%5Ftoken={TOKEN}",  # only the parameter's real name counts
    ],
)
def test_a_wrong_access_token_is_a_401(guarded: Server, target: str) -> None:
    response = guarded.raw("GET", target)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN.encode() not in response.content


def test_the_access_token_is_for_reads_only(guarded: Server) -> None:
    response = guarded.raw("POST", f"/api/v2/jobs/job-0?access_token={TOKEN}")
    assert response.status_code == 401


def test_the_access_token_never_reaches_a_link_or_a_problem(guarded: Server) -> None:
    page = guarded.get(f"/api/v2/jobs?limit=1&access_token={TOKEN}")
    assert page.status_code == 200
    assert 'rel="next"' in page.headers["link"]
    assert TOKEN not in page.headers["link"]
    assert "access_token" not in page.headers["link"]
    bad = guarded.get(f"/api/v2/jobs?limit=0&access_token={TOKEN}")
    assert bad.status_code == 400
    assert TOKEN not in bad.text


def test_a_browser_stream_opens_with_the_access_token(guarded: Server) -> None:
    headers = {"Accept": "text/event-stream"}
    with guarded.client.stream("GET", f"/api/v2/jobs?watch=true&access_token={TOKEN}", headers=headers) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:") and '"initial_events_end":true' in line:
                break


def test_the_access_token_is_never_logged(guarded: Server) -> None:
    """Whatever the request does (served, refused, a 400, a 404, a stream, a request the HTTP
    parser rejects), no log line holds the token, while the access log shows each path."""
    targets = [
        f"/api/v2/jobs/job-0?access_token={TOKEN}",
        f"/api/v2/jobs/nope?access_token={TOKEN}",
        f"/api/v2/jobs?limit=0&access_token={TOKEN}",
        f"/api/v2/jobs/bad%2Fid?access_token={TOKEN}",
        f"/api/v2/jobs/job-1?access_token={TOKEN}x",
        f"/api/v2/jobs?watch=true&revision=gone.1&access_token={TOKEN}",
    ]
    for target in targets:
        guarded.raw("GET", target)
    host, port = guarded.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET /api/v2/jobs/job-2?access_token={TOKEN} HTTP/1.1\r\nHost x\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 400")
    wait_until(
        lambda: (
            {"/api/v2/jobs/job-0", "/api/v2/jobs/nope", "/api/v2/jobs/job-1"}
            <= {entry.get("path") for entry in guarded.json_logs()}
        ),
        what="the access lines",
    )
    text = guarded.log_path.read_text(errors="replace")
    assert "Invalid HTTP request" in text  # uvicorn's own warning is in the same log
    assert TOKEN not in text
    assert "access_token" not in text
