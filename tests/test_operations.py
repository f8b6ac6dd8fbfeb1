"""Operations (issue 3): metrics, structured logs, request ids, token auth, OpenAPI, `check`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from app.application import create_app
from app.openapi import OPERATIONS, build_openapi, openapi_path
from app.settings import load_settings
from tests.support import REPO, Server, encode, put_session, server_env, session_doc, wait_until, write_in_place


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = server.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --- metrics -------------------------------------------------------------------------------------


def test_request_metrics_by_route_template_and_status(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    put_session(sessions_dir, "a")
    server = serve(sessions_dir)
    for _ in range(3):
        assert server.get("/api/v2/jobs/a").status_code == 200
    assert server.get("/api/v2/jobs/nope").status_code == 404
    assert server.get("/api/v2/jobs?limit=5").status_code == 200
    job = "/api/v2/jobs/{job_id}"

    def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        samples = scrape(server)
        ok = value(samples, "sessions_http_requests_total", route=job, method="GET", status="200") == 3
        return samples if ok else {}

    samples = wait_until(counted, 10, what="request counts")
    assert value(samples, "sessions_http_requests_total", route=job, method="GET", status="404") == 1
    assert value(samples, "sessions_http_requests_total", route="/api/v2/jobs", method="GET", status="200") == 1
    assert value(samples, "sessions_http_request_duration_seconds_count", route=job, method="GET", status="200") == 3
    assert value(samples, "sessions_http_request_duration_seconds_sum", route=job, method="GET", status="200") > 0
    buckets = [
        v
        for (name, labels), v in samples.items()
        if name == "sessions_http_request_duration_seconds_bucket"
        and ("status", "200") in labels
        and ("route", job) in labels
    ]
    assert buckets and max(buckets) == 3  # cumulative buckets end at the count
    # raw paths never become labels
    assert not any("/api/v2/jobs/a" == dict(labels).get("route") for _, labels in samples)


def test_store_metrics_follow_the_folder_and_the_cache(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    for n in range(5):
        put_session(sessions_dir, f"j{n}", updated_at=f"2024-01-0{n + 1}T00:00:00Z")
    server = serve(sessions_dir, env={"SESSIONS_CACHE_MAX_ENTRIES": "2"})
    samples = scrape(server)
    assert value(samples, "sessions_indexed") == 5
    assert value(samples, "sessions_cache_entries") == 2
    assert value(samples, "sessions_cache_bytes") > 0
    assert value(samples, "sessions_warmup_duration_seconds") > 0
    assert value(samples, "sessions_ready") == 1

    for n in range(5):  # three of these are evicted: misses, loads, evictions
        assert server.get(f"/api/v2/jobs/j{n}").status_code == 200
    samples = scrape(server)
    assert value(samples, "sessions_cache_misses_total") >= 3
    assert value(samples, "sessions_cache_loads_total") >= 3
    assert value(samples, "sessions_cache_evictions_total") >= 3
    assert value(samples, "sessions_cache_hits_total") >= 0
    assert value(samples, "sessions_cache_entries") == 2

    (sessions_dir / "bad.json").write_bytes(b"not json")
    put_session(sessions_dir, "new")

    def followed() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        samples = scrape(server)
        done = value(samples, "sessions_invalid_files") == 1 and value(samples, "sessions_indexed") == 6
        return samples if done else {}

    samples = wait_until(followed, 10, what="sessions and invalid files to follow the folder")
    assert value(samples, "sessions_watcher_events_total") > 0
    assert value(samples, "sessions_watcher_up") == 1
    assert value(samples, "sessions_reload_lag_seconds_count") >= 1
    assert value(samples, "sessions_changes_total", change="added") >= 1
    assert value(samples, "sessions_changes_total", change="invalid") >= 1
    # the event-loop monitor measures a lag every tick
    wait_until(lambda: value(scrape(server), "sessions_event_loop_lag_seconds_count") > 0, 10)


def test_rescans_are_counted_in_poll_mode(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    server = serve(sessions_dir, env={"SESSIONS_WATCH": "poll", "SESSIONS_POLL_INTERVAL_MS": "50"})
    wait_until(lambda: value(scrape(server), "sessions_rescans_total") >= 3, 10, what="rescans")
    assert value(scrape(server), "sessions_watcher_up") == 0


def test_metrics_add_up_across_workers(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    put_session(sessions_dir, "a")
    server = serve(sessions_dir, args=("--workers", "2"))
    count = 40
    for _ in range(count):
        assert server.get("/api/v2/jobs/a").status_code == 200
    job = "/api/v2/jobs/{job_id}"
    # each worker publishes its figures within a monitor tick; the total is over both workers
    wait_until(
        lambda: value(scrape(server), "sessions_http_requests_total", route=job, method="GET", status="200") == count,
        15,
        what="the requests of both workers to add up",
    )
    samples = scrape(server)
    assert value(samples, "sessions_indexed") == 1  # the same in every worker: max, not sum


# --- logs and request ids ------------------------------------------------------------------------


def test_every_line_is_json_with_an_access_line_per_request(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    put_session(sessions_dir, "a")
    server = serve(sessions_dir)
    response = server.get("/api/v2/jobs/a", headers={"X-Request-ID": "trace-123"})
    assert response.headers["x-request-id"] == "trace-123"
    generated = server.get("/api/v2/jobs/nope").headers["x-request-id"]
    assert len(generated) == 16
    insane = server.get("/livez", headers={"X-Request-ID": "x" * 500}).headers["x-request-id"]
    assert insane != "x" * 500 and len(insane) == 16

    def access_lines() -> list[dict[str, object]]:
        entries = server.json_logs()
        access = [e for e in entries if e["logger"] == "app.access"]
        return access if len(access) >= 3 else []

    access = wait_until(access_lines, 10, what="access lines")
    lines = server.logs()
    assert all(line.startswith("{") for line in lines), [line for line in lines if not line.startswith("{")]
    for entry in server.json_logs():
        assert {"time", "level", "logger", "message"} <= set(entry)
    first = next(e for e in access if e.get("request_id") == "trace-123")
    assert first["method"] == "GET"
    assert first["route"] == "/api/v2/jobs/{job_id}"
    assert first["status"] == 200
    assert isinstance(first["duration_ms"], float)
    assert any(e.get("request_id") == generated and e["status"] == 404 for e in access)


def test_text_log_format(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    server = serve(sessions_dir, env={"SESSIONS_LOG_FORMAT": "text"})
    server.get("/livez")
    lines = wait_until(lambda: [line for line in server.logs() if "app.access" in line], 10)
    assert not lines[0].startswith("{")
    assert "GET /livez 200" in lines[0]


def test_an_invalid_file_is_logged_once_per_change(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    server = serve(sessions_dir, env={"SESSIONS_WATCH": "poll", "SESSIONS_POLL_INTERVAL_MS": "50"})
    write_in_place(sessions_dir / "bad.json", b"[1]")

    def warnings() -> list[dict[str, object]]:
        return [e for e in server.json_logs() if e["message"] == "invalid session file" and e["job_id"] == "bad"]

    first = wait_until(warnings, 10, what="the warning")
    assert "not a JSON object" in str(first[0]["reason"])
    rescans = value(scrape(server), "sessions_rescans_total")
    wait_until(lambda: value(scrape(server), "sessions_rescans_total") >= rescans + 5, 10)
    assert len(warnings()) == 1  # many rescans later, still once
    write_in_place(sessions_dir / "bad.json", b"{broken")
    wait_until(lambda: len(warnings()) == 2, 10, what="a second warning after a change")
    assert "not JSON" in str(warnings()[1]["reason"])


# --- auth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["env", "file"])
def test_bearer_token(sessions_dir: Path, serve: Callable[..., Server], tmp_path: Path, source: str) -> None:
    put_session(sessions_dir, "a")
    if source == "env":
        env = {"SESSIONS_API_TOKEN": "s3cret-token"}
    else:
        token_file = tmp_path / "token"
        token_file.write_text("s3cret-token\n")  # a mounted secret's trailing newline
        env = {"SESSIONS_API_TOKEN_FILE": str(token_file)}
    server = serve(sessions_dir, env=env)
    for path in ["/api/v2/jobs/a", "/api/v2/jobs", "/api/v2/jobs/"]:
        missing = server.get(path)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.headers["content-type"] == "application/problem+json"
        for bad in ["Bearer wrong", "Bearer s3cret-token-longer", "Basic czNjcmV0LXRva2Vu", "s3cret-token", "Bearer"]:
            assert server.get(path, headers={"Authorization": bad}).status_code == 401, bad
        assert server.get(path, headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert server.get(path, headers={"Authorization": "bearer s3cret-token"}).status_code == 200
    for path in ["/livez", "/healthz", "/readyz", "/metrics", "/openapi.json"]:
        assert server.get(path).status_code == 200, path


# --- OpenAPI -------------------------------------------------------------------------------------


def test_openapi_is_valid_and_lists_every_route(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    server = serve(sessions_dir)
    document = server.get("/openapi.json").json()
    validate(document)
    app = create_app(load_settings({"SESSIONS_DIR": str(sessions_dir)}))
    routes = {openapi_path(route.path).rstrip("/") for route in app.routes if isinstance(route, Route)}
    assert routes == set(document["paths"]) == set(OPERATIONS)
    limit = next(p for p in document["paths"]["/api/v2/jobs"]["get"]["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 1000)


def test_a_route_without_a_documented_operation_fails_the_build() -> None:
    with pytest.raises(KeyError):
        build_openapi([Route("/undocumented", lambda request: None)])


# --- check ---------------------------------------------------------------------------------------


def run_check(folder: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "check", str(folder)],
        cwd=REPO,
        env=server_env(Path(".")),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_a_good_folder(sessions_dir: Path) -> None:
    put_session(sessions_dir, "a")
    (sessions_dir / "notes.txt").write_text("ignored")
    result = run_check(sessions_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    assert "1 valid, 0 invalid" in result.stderr


def test_check_the_demo_folder() -> None:
    result = run_check(REPO / "data" / "sessions")
    assert result.returncode == 0, result.stdout


def test_check_lists_each_invalid_file_with_its_reason(sessions_dir: Path) -> None:
    put_session(sessions_dir, "good")
    (sessions_dir / "array.json").write_bytes(b"[]")
    (sessions_dir / "broken.json").write_bytes(b'{"a": ')
    (sessions_dir / "liar.json").write_bytes(encode(session_doc("someone-else")))
    result = run_check(sessions_dir)
    assert result.returncode == 1
    lines = sorted(result.stdout.splitlines())
    assert len(lines) == 3
    assert lines[0].startswith("array.json: not a JSON object")
    assert lines[1].startswith("broken.json: not JSON")
    assert lines[2].startswith("liar.json: job_id 'someone-else' does not match")
    assert orjson.loads((sessions_dir / "good.json").read_bytes())["job_id"] == "good"


def test_check_a_missing_folder_exits_2(tmp_path: Path) -> None:
    result = run_check(tmp_path / "nope")
    assert result.returncode == 2
    assert "SESSIONS_DIR" in result.stderr
