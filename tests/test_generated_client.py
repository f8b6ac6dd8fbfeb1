"""A client generated from the running service's /openapi.json works: openapi-python-client
generates it (nothing cached between runs: a fresh temporary folder each time), the calling code
in tests/generated_client_calls.py type-checks with `mypy --strict` against it, and, with a plain
`Client` (no token is configured, so none is declared), lists, gets, gets a 304 and long-polls a
real server. See docs/generated-clients.md."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

from app.api.application import create_app
from app.api.openapi import build_openapi
from app.settings import load_settings
from tests.support import REPO, Server, put_session, start_server
from tests.support.ops import wait_for_scrape

pytestmark = pytest.mark.slow  # a client generated from the OpenAPI document, then mypy --strict

CALLS = REPO / "tests" / "generated_client_calls.py"
PACKAGE = "sessions_api"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    folder = tmp_path_factory.mktemp("sessions")
    put_session(folder, "run-1", status="running", user_id="ann", updated_at="2024-05-01T10:00:00Z")
    put_session(folder, "hitl-2", status="pending_hitl", user_id="bob", updated_at="2024-05-01T09:00:00Z")
    put_session(folder, "done-3", status="completed", user_id="ann", updated_at="2024-05-01T08:00:00Z")
    server = start_server(folder, tmp_path_factory.mktemp("logs"))
    yield server, folder
    server.stop()


@pytest.fixture(scope="module")
def generated(server: tuple[Server, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder holding the generated package and the calling code, on sys.path while in use."""
    where = tmp_path_factory.mktemp("generated")
    spec = where / "openapi.json"
    spec.write_bytes(server[0].get("/openapi.json").content)
    generate(spec, where)
    shutil.copy(CALLS, where / "calls.py")
    sys.path.insert(0, str(where))
    try:
        yield where
    finally:
        sys.path.remove(str(where))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
            del sys.modules[name]
        sys.modules.pop("calls", None)


def generate(spec: Path, where: Path) -> None:
    """openapi-python-client's package `sessions_api` in `where`, from the document `spec`."""
    config = where / "config.yaml"
    config.write_text("post_hooks: []\n")  # no formatter run: the code is generated to be imported, not read
    result = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", spec, "--meta", "none"]
        + ["--output-path", where / PACKAGE, "--config", config],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # A warning means a part of the document the generator could not turn into code.
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.fixture(scope="module")
def calls(generated: Path) -> ModuleType:
    return importlib.import_module("calls")


def test_the_calling_code_type_checks_with_mypy_strict(generated: Path) -> None:
    # Only the calling code is checked (the generated package is followed, its own style is
    # the generator's); the cache goes to the temporary folder, so nothing is reused next run.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent"]
        + ["--cache-dir", str(generated / ".mypy_cache"), "calls.py"],
        cwd=generated,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_parameter_has_a_default_and_booleans_are_booleans(generated: Path) -> None:
    source = (generated / PACKAGE / "api" / "default" / "list_jobs.py").read_text()
    assert "include_saved: bool | Unset = UNSET" in source
    assert "watch: bool | Unset = UNSET" in source
    assert "limit: int | Unset = UNSET" in source  # never sent unless asked for
    assert "status: list[str] | Unset = UNSET" in source


def test_list_with_a_plain_client(server: tuple[Server, Path], calls: ModuleType) -> None:
    with calls.client(server[0].base_url) as api:
        assert calls.unfinished_ids(api) == ["run-1", "hitl-2"]
        assert calls.unfinished_ids(api, ["running", "completed"]) == ["run-1"]  # sent as repeats
        ids, total, link = calls.all_ids(api, 2)
    assert (ids, total) == (["run-1", "hitl-2"], 3)
    assert link is not None and 'rel="next"' in link


def test_get_then_304_with_if_none_match(server: tuple[Server, Path], calls: ModuleType) -> None:
    with calls.client(server[0].base_url) as api:
        first = calls.fetch(api, "run-1")
        again = calls.fetch(api, "run-1", if_none_match=first.etag)
        missing = calls.fetch(api, "nope")
    assert first.status == 200
    assert first.document is not None and first.document["status"] == "running"
    assert first.etag
    assert (again.status, again.etag, again.document) == (304, first.etag, None)
    assert (missing.status, missing.problem_type) == (404, "/problems/session-not-found")
    # The problem's type resolves, against the request's URL, to a page describing it.
    page = server[0].get(missing.problem_type)
    assert page.status_code == 200 and "Session not found" in page.text


def test_a_long_poll_with_prefer_wait(server: tuple[Server, Path], calls: ModuleType) -> None:
    base_url, folder = server[0].base_url, server[1]
    with calls.client(base_url) as api:
        current = calls.fetch(api, "hitl-2")
        # Nothing changes: a 304 after the wait, which the server says it applied.
        unchanged = calls.fetch(api, "hitl-2", if_none_match=current.etag, wait_s=1)
    assert (unchanged.status, unchanged.etag, unchanged.preference_applied) == (304, current.etag, "wait=1")

    # A new version while it waits: a 200 with it, at once.
    answers: list[Any] = []

    def poll() -> None:
        with calls.client(base_url) as waiting_api:
            answers.append(calls.fetch(waiting_api, "hitl-2", if_none_match=current.etag, wait_s=60))

    waiting = threading.Thread(target=poll)
    waiting.start()
    try:
        wait_for_scrape(
            server[0], lambda s: s.value("sessions_streams_open", kind="wait") == 1, what="the poll waiting"
        )
        put_session(folder, "hitl-2", status="running", user_id="bob", updated_at="2024-05-01T11:00:00Z")
    finally:
        waiting.join(30)  # well before the 60 s wait: the change ends it
    assert not waiting.is_alive()
    (changed,) = answers
    assert changed.status == 200
    assert changed.document["status"] == "running"
    assert changed.etag != current.etag
    assert changed.preference_applied == "wait=60"


def test_with_a_token_the_generated_api_calls_take_an_authenticated_client(tmp_path: Path) -> None:
    """The document of a service with a token (built in-process: generation is what is checked
    here; the token's checks over HTTP are in test_auth)."""
    folder = tmp_path / "sessions"
    folder.mkdir()
    app = create_app(load_settings({"SESSIONS_DIR": str(folder), "SESSIONS_API_TOKEN": "t0ken"}))
    spec = tmp_path / "openapi.json"
    spec.write_bytes(orjson.dumps(build_openapi(app.routes, token_required=True)))
    generate(spec, tmp_path)
    functions = tmp_path / PACKAGE / "api" / "default"
    for module in ("get_job.py", "list_jobs.py"):
        assert "    client: AuthenticatedClient,\n" in (functions / module).read_text(), module
    assert "    client: AuthenticatedClient | Client,\n" in (functions / "livez.py").read_text()
