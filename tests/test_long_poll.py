"""The long poll (docs/contract.md#long-poll): GET /api/v2/jobs/{job_id} with If-None-Match and Prefer: wait=N
answers as soon as a new version is applied (200), the session is deleted (404), or after N
seconds (304), capped at SESSIONS_MAX_WAIT_S, with Preference-Applied."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import Server, put_session, start_server, wait_until

Serve = Callable[..., Server]
# The tests whose long polls nothing answers but the clock share one server over one unchanging
# session; those that write, or count waiting polls, keep a server of their own.


@pytest.fixture(scope="module")
def unchanging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real server over one session, "j", that no test changes."""
    folder = tmp_path_factory.mktemp("sessions")
    put_session(folder, "j")
    server = start_server(folder, tmp_path_factory.mktemp("logs"))
    yield server
    server.stop()


class Poll:
    """A long poll sent in a thread (a real client waiting), with its timing."""

    def __init__(self, server: Server, job_id: str, headers: dict[str, str]) -> None:
        self.response: httpx.Response | None = None
        self.seconds = 0.0
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(server.base_url, job_id, headers), daemon=True)
        self._thread.start()

    def _run(self, base_url: str, job_id: str, headers: dict[str, str]) -> None:
        started = time.monotonic()
        try:
            self.response = httpx.get(f"{base_url}/api/v2/jobs/{job_id}", headers=headers, timeout=60)
        except httpx.HTTPError as exc:
            self.failure = exc
        self.seconds = time.monotonic() - started

    def result(self, timeout: float = 30.0) -> httpx.Response:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the long poll did not answer"
        assert self.response is not None, self.failure
        return self.response


def waiting(server: Server, count: int = 1) -> None:
    """Until `count` long polls are waiting, by the server's own gauge."""
    wait_until(
        lambda: f'sessions_streams_open{{kind="wait"}} {float(count)}' in server.get("/metrics").text,
        what=f"{count} waiting long polls",
    )


def test_a_new_version_answers_at_once(sessions_dir: Path, serve: Serve) -> None:
    put_session(sessions_dir, "j", status="running")
    server = serve(sessions_dir)
    etag = server.get("/api/v2/jobs/j").headers["etag"]
    poll = Poll(server, "j", {"If-None-Match": etag, "Prefer": "wait=60"})
    waiting(server)
    put_session(sessions_dir, "j", status="pending_hitl")
    response = poll.result()
    assert response.status_code == 200
    assert response.json()["status"] == "pending_hitl"
    assert response.headers["etag"] != etag
    assert response.headers["preference-applied"] == "wait=60"
    assert poll.seconds < 30  # not the 60 s it could have waited


def test_a_deletion_answers_404(sessions_dir: Path, serve: Serve) -> None:
    put_session(sessions_dir, "j")
    server = serve(sessions_dir)
    etag = server.get("/api/v2/jobs/j").headers["etag"]
    poll = Poll(server, "j", {"If-None-Match": etag, "Prefer": "wait=60"})
    waiting(server)
    (sessions_dir / "j.json").unlink()
    response = poll.result()
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["preference-applied"] == "wait=60"


def test_no_change_is_a_304_after_the_wait(unchanging: Server) -> None:
    server = unchanging
    etag = server.get("/api/v2/jobs/j").headers["etag"]
    started = time.monotonic()
    response = server.get("/api/v2/jobs/j", headers={"If-None-Match": etag, "Prefer": "wait=1"})
    elapsed = time.monotonic() - started
    assert response.status_code == 304
    assert response.headers["preference-applied"] == "wait=1"
    assert response.headers["etag"] == etag
    assert 0.9 <= elapsed < 10


def test_the_wait_is_capped(sessions_dir: Path, serve: Serve) -> None:
    put_session(sessions_dir, "j")
    server = serve(sessions_dir, env={"SESSIONS_MAX_WAIT_S": "1"})
    etag = server.get("/api/v2/jobs/j").headers["etag"]
    started = time.monotonic()
    response = server.get("/api/v2/jobs/j", headers={"If-None-Match": etag, "Prefer": "wait=3600"})
    assert response.status_code == 304
    assert response.headers["preference-applied"] == "wait=1"
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("prefer", ["wait=60", "respond-async, wait=60", 'wait="60"', "wait=60; foo=bar"])
def test_a_stale_etag_answers_at_once_as_without_prefer(unchanging: Server, prefer: str) -> None:
    server = unchanging
    started = time.monotonic()
    response = server.get("/api/v2/jobs/j", headers={"If-None-Match": '"not-the-etag"', "Prefer": prefer})
    assert response.status_code == 200
    assert "preference-applied" not in response.headers
    assert time.monotonic() - started < 10


def test_other_preferences_are_ignored(unchanging: Server) -> None:
    server = unchanging
    etag = server.get("/api/v2/jobs/j").headers["etag"]
    response = server.get("/api/v2/jobs/j", headers={"If-None-Match": etag, "Prefer": "return=minimal"})
    assert response.status_code == 304 and "preference-applied" not in response.headers


@pytest.mark.parametrize("prefer", ["wait", "wait=", "wait=abc", "wait=-1", "wait=1.5", "wait=١"])
def test_a_malformed_wait_is_a_400(unchanging: Server, prefer: str) -> None:
    server = unchanging
    etag = server.get("/api/v2/jobs/j").headers["etag"]
    # http.client sends the header's bytes as they are (latin-1): the Arabic-Indic digit is UTF-8.
    headers = {"If-None-Match": etag, "Prefer": prefer.encode().decode("latin-1")}
    response = server.raw("GET", "/api/v2/jobs/j", headers)
    assert response.status_code == 400
    assert "wait" in response.json()["detail"]


def test_many_waiters_answer_together_and_count_as_streams(sessions_dir: Path, serve: Serve) -> None:
    put_session(sessions_dir, "j")
    server = serve(sessions_dir, env={"SESSIONS_MAX_STREAMS": "5"})
    etag = server.get("/api/v2/jobs/j").headers["etag"]
    polls = [Poll(server, "j", {"If-None-Match": etag, "Prefer": "wait=60"}) for _ in range(5)]
    waiting(server, 5)
    refused = server.get("/api/v2/jobs/j", headers={"If-None-Match": etag, "Prefer": "wait=60"})
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert refused.json()["type"] == "/problems/too-many-streams"
    put_session(sessions_dir, "j", status="completed")
    assert [poll.result().status_code for poll in polls] == [200] * 5
    waiting(server, 0)
