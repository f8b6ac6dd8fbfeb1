"""The job API's own callers (see docs/generated-clients.md): FastAPI's boolean spellings, the
statuses that count as finished (SESSIONS_FINISHED_STATUSES) in lists and collection watches,
and `check` naming the `*.json` files the service does not serve. One real server, started with
a finished set that counts `pending_review` as finished."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.support import Server, put_session, start_server
from tests.support.ops import run_check
from tests.support.watch import Watch

FINISHED = "completed,failed,cancelled,pending_review"
TRUE = ["true", "TRUE", "1", "yes", "Yes", "on", "ON", "t", "T", "y", "Y"]
FALSE = ["false", "False", "0", "no", "NO", "off", "Off", "f", "F", "n", "N"]
NOT_BOOLEANS = ["", "maybe", "2", "TRUE1", "tru", "yess", "%20true", "nope", "-1"]


def fill(folder: Path) -> Path:
    put_session(folder, "run", status="running", user_id="ann", updated_at="2024-05-01T10:00:00Z")
    put_session(folder, "rev", status="pending_review", user_id="ann", updated_at="2024-05-01T09:00:00Z")
    put_session(folder, "done", status="completed", user_id="bob", updated_at="2024-05-01T08:00:00Z")
    put_session(folder, "hitl", status="pending_hitl", user_id="bob", updated_at="2024-05-01T07:00:00Z")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Read-only tests share it: they must not change its folder."""
    folder = fill(tmp_path_factory.mktemp("sessions"))
    server = start_server(folder, tmp_path_factory.mktemp("logs"), env={"SESSIONS_FINISHED_STATUSES": FINISHED})
    yield server
    server.stop()


def ids(server: Server, query: str) -> list[str]:
    response = server.get(f"/api/v2/jobs?{query}")
    assert response.status_code == 200, response.text
    return [item["job_id"] for item in response.json()]


ALL = ["run", "rev", "done", "hitl"]
UNFINISHED = ["run", "hitl"]


@pytest.mark.parametrize("spelling", TRUE)
def test_every_true_spelling_includes_saved_sessions(server: Server, spelling: str) -> None:
    assert ids(server, f"include_saved={spelling}") == ALL


@pytest.mark.parametrize("spelling", FALSE)
def test_every_false_spelling_leaves_finished_sessions_out(server: Server, spelling: str) -> None:
    assert ids(server, f"include_saved={spelling}") == UNFINISHED


@pytest.mark.parametrize("spelling", NOT_BOOLEANS)
def test_anything_else_is_a_400_naming_the_spellings(server: Server, spelling: str) -> None:
    for target in (f"/api/v2/jobs?include_saved={spelling}", f"/api/v2/jobs?watch={spelling}"):
        response = server.get(target)
        assert response.status_code == 400, (target, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        detail = orjson.loads(response.content)["detail"]
        assert "boolean" in detail and "yes, no" in detail, detail
    response = server.get(f"/api/v2/jobs/run?watch={spelling}")
    assert response.status_code == 400, response.text


@pytest.mark.parametrize(("spelling", "streams"), [("on", True), ("Y", True), ("off", False), ("N", False)])
def test_watch_takes_the_spellings_too(server: Server, spelling: str, streams: bool) -> None:
    for path in ("/api/v2/jobs", "/api/v2/jobs/run"):
        # HEAD answers as the GET would begin, without holding a stream open.
        response = server.client.head(f"{path}?watch={spelling}")
        assert response.status_code == 200
        media_type = response.headers["content-type"]
        assert (media_type == "application/x-ndjson") == streams, (path, spelling, media_type)


def test_the_finished_statuses_setting_decides_the_list(server: Server) -> None:
    assert ids(server, "include_saved=false") == UNFINISHED
    assert server.get("/api/v2/jobs?include_saved=false").headers["x-total-count"] == "2"
    # An explicit status filter still leaves finished ones out with include_saved=false.
    assert ids(server, "include_saved=false&status=pending_review,running") == ["run"]
    assert ids(server, "include_saved=false&user_id=ann") == ["run"]
    assert ids(server, "status=pending_review") == ["rev"]  # listed by default: include_saved=true


def test_the_default_finished_statuses(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    server = serve(fill(sessions_dir))
    assert ids(server, "include_saved=false") == ["run", "rev", "hitl"]


def test_a_collection_watch_uses_the_finished_statuses(
    server: Server, watch: Callable[..., Watch], tmp_path: Path
) -> None:
    stream = watch(server, "/api/v2/jobs?watch=true&include_saved=no")
    stream.wait_for(lambda event: event.get("initial_events_end") is True, what="the initial state")
    added = [event["object"]["job_id"] for event in stream.events if event["type"] == "ADDED"]
    assert added == UNFINISHED


def test_a_watched_session_turning_finished_is_deleted_from_the_watch(
    sessions_dir: Path, serve: Callable[..., Server], watch: Callable[..., Watch]
) -> None:
    server = serve(fill(sessions_dir), env={"SESSIONS_FINISHED_STATUSES": FINISHED})
    stream = watch(server, "/api/v2/jobs?watch=1&include_saved=f")
    stream.wait_for(lambda event: event.get("initial_events_end") is True, what="the initial state")
    put_session(sessions_dir, "run", status="pending_review", user_id="ann", updated_at="2024-05-01T11:00:00Z")
    deleted = stream.wait_for(lambda event: event["type"] == "DELETED", what="run leaving the watch")
    assert deleted["object"]["job_id"] == "run"
    assert deleted["object"]["status"] == "running"  # its last matching summary
    put_session(sessions_dir, "rev", status="running", user_id="ann", updated_at="2024-05-01T12:00:00Z")
    added = stream.wait_for(lambda event: event["type"] == "ADDED" and event["object"]["job_id"] == "rev")
    assert added["object"]["status"] == "running"


def test_check_names_the_json_files_that_are_not_served(sessions_dir: Path) -> None:
    put_session(sessions_dir, "good")
    for name in ("_draft-1.json", "café.json", "with space.json", "-dash.json"):
        (sessions_dir / name).write_bytes(b'{"status": "running"}')
    (sessions_dir / ".hidden.json").write_bytes(b"{}")  # a writer's temporary file: silent
    (sessions_dir / "a.json.tmp").write_bytes(b"{}")  # not *.json: silent
    (sessions_dir / "_dir.json").mkdir()  # a folder: silent
    result = run_check(sessions_dir)
    assert result.returncode == 0, result.stdout + result.stderr  # nothing invalid among the served
    lines = result.stdout.splitlines()
    assert [line.partition(": ")[0] for line in lines] == [
        "-dash.json",
        "_draft-1.json",
        "café.json",
        "with space.json",
    ]
    for line in lines:
        assert ": not served: " in line and "is not a job id" in line, line
    assert "1 valid, 0 invalid" in result.stderr
    assert "4 *.json names not served" in result.stderr


def test_check_lists_unserved_names_beside_invalid_files(sessions_dir: Path) -> None:
    (sessions_dir / "broken.json").write_bytes(b"[]")
    (sessions_dir / "_draft-1.json").write_bytes(b"{}")
    result = run_check(sessions_dir)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines()[0].startswith("_draft-1.json: not served")
    assert result.stdout.splitlines()[1].startswith("broken.json: not a JSON object")
