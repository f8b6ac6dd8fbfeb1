"""Faults (issue 5): for each, the service keeps answering probes, says what is wrong in its logs
and metrics, and agrees with the folder once the fault ends. Real folders, real watcher, real
server; the faults are made for real (inotify limits, file descriptor limits, permissions)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import Server, encode, put_session, session_doc, wait_until, write_atomic, write_in_place


def metric(server: Server, name: str) -> float:
    for family in text_string_to_metric_families(server.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    return 0.0


def listed(server: Server) -> list[str]:
    return [item["job_id"] for item in server.get("/api/v2/jobs?limit=1000").json()]


def logged(server: Server, message: str) -> list[dict[str, object]]:
    return [entry for entry in server.json_logs() if str(entry["message"]).startswith(message)]


def agrees_with_folder(server: Server, folder: Path) -> bool:
    expected = sorted(path.stem for path in folder.glob("*.json"))
    if sorted(listed(server)) != expected:
        return False
    return all(
        server.get(f"/api/v2/jobs/{job_id}").content == (folder / f"{job_id}.json").read_bytes() for job_id in expected
    )


@pytest.mark.parametrize("how", ["deleted and created again", "replaced by a rename"])
def test_sessions_folder_deleted_or_replaced(tmp_path: Path, serve: Callable[..., Server], how: str) -> None:
    folder = tmp_path / "sessions"
    folder.mkdir()
    put_session(folder, "old-1")
    put_session(folder, "old-2")
    server = serve(folder, env={"SESSIONS_POLL_INTERVAL_MS": "100"})
    if how == "deleted and created again":
        shutil.rmtree(folder)
        # while it is gone: probes answer and what is in memory is still served
        assert server.get("/livez").status_code == 200
        assert server.get("/api/v2/jobs/old-1").status_code == 200
        wait_until(lambda: logged(server, "native watcher down"), 10, what="the watcher fault in the logs")
        assert metric(server, "sessions_watcher_up") == 0
        folder.mkdir()
        put_session(folder, "new-1")
    else:
        replacement = tmp_path / "sessions.new"
        replacement.mkdir()
        put_session(replacement, "new-1")
        put_session(replacement, "old-2", status="completed")
        os.rename(folder, tmp_path / "sessions.old")
        os.rename(replacement, folder)
    wait_until(lambda: agrees_with_folder(server, folder), 20, what="agreement with the new folder")
    # and the native watcher is back on the new folder: a change shows without a rescan
    wait_until(lambda: metric(server, "sessions_watcher_up") == 1, 40, what="the watcher to restart")
    put_session(folder, "after")
    wait_until(lambda: "after" in listed(server), 5)
    assert server.get("/readyz").status_code == 200


@pytest.fixture
def inotify_instances() -> Iterator[Path]:
    limit = Path("/proc/sys/fs/inotify/max_user_instances")
    try:
        original = limit.read_text()
        limit.write_text(original)
    except OSError as exc:
        pytest.skip(f"cannot change the inotify limit here: {exc}")
    try:
        yield limit
    finally:
        limit.write_text(original)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_native_watcher_cannot_start_falls_back_to_polling(
    sessions_dir: Path, serve: Callable[..., Server], inotify_instances: Path
) -> None:
    original = inotify_instances.read_text()
    put_session(sessions_dir, "a")
    inotify_instances.write_text("0\n")  # no process of this user can start an inotify watch
    try:
        server = serve(sessions_dir, env={"SESSIONS_POLL_INTERVAL_MS": "100"})
        wait_until(lambda: logged(server, "native watcher down"), 10, what="the fault in the logs")
        fault = logged(server, "native watcher down")[0]
        assert fault["level"] == "error" and fault["reason"]
        assert metric(server, "sessions_watcher_up") == 0
        # polling meanwhile: changes still show
        put_session(sessions_dir, "b")
        wait_until(lambda: "b" in listed(server), 5, what="a change while polling")
    finally:
        inotify_instances.write_text(original)
    wait_until(lambda: metric(server, "sessions_watcher_up") == 1, 60, what="the native watcher to come back")
    assert logged(server, "native watcher running again")
    put_session(sessions_dir, "c")
    wait_until(lambda: "c" in listed(server), 5)


def test_file_grows_past_the_size_limit(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    small = encode(session_doc("j", status="running"))
    (sessions_dir / "j.json").write_bytes(small)
    server = serve(sessions_dir, env={"SESSIONS_MAX_FILE_BYTES": "4096"})
    write_atomic(sessions_dir / "j.json", encode(session_doc("j", status="running", blob="x" * 10_000)))
    response = wait_until(lambda: (r := server.get("/api/v2/jobs/j")).headers.get("x-session-stale") == "true" and r, 5)
    assert response.content == small
    warnings = [e for e in logged(server, "invalid session file") if e["job_id"] == "j"]
    assert "larger than SESSIONS_MAX_FILE_BYTES" in str(warnings[0]["reason"])
    assert metric(server, "sessions_invalid_files") == 1
    write_atomic(sessions_dir / "j.json", small)
    wait_until(lambda: "x-session-stale" not in server.get("/api/v2/jobs/j").headers, 5)
    assert metric(server, "sessions_invalid_files") == 0


def test_links_that_loop_or_lead_outside(tmp_path: Path, serve: Callable[..., Server]) -> None:
    folder = tmp_path / "sessions"
    folder.mkdir()
    outside = tmp_path / "outside.json"
    outside.write_bytes(encode(session_doc("out")))
    server = serve(folder)
    (folder / "loop.json").symlink_to(folder / "loop.json")
    (folder / "out.json").symlink_to(outside)
    (folder / "dangling.json").symlink_to(folder / "missing")
    put_session(folder, "marker")
    wait_until(lambda: metric(server, "sessions_invalid_files") == 3, 5, what="three invalid files")
    reasons = {e["job_id"]: str(e["reason"]) for e in logged(server, "invalid session file")}
    assert "loop" in reasons["loop"]
    assert "outside" in reasons["out"]
    assert "does not exist" in reasons["dangling"]
    for job_id in reasons:
        assert server.get(f"/api/v2/jobs/{job_id}").status_code == 404
    assert listed(server) == ["marker"]
    (folder / "dangling.json").unlink()
    (folder / ".dangling-target").write_bytes(encode(session_doc("dangling")))
    (folder / "dangling.json").symlink_to(folder / ".dangling-target")  # a link inside is fine
    wait_until(lambda: sorted(listed(server)) == ["dangling", "marker"], 5)


def test_names_that_are_not_utf8(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    server = serve(sessions_dir)
    root = os.fsencode(sessions_dir)
    for name in [b"\xff\xfe.json", b"job-\x80.json", b"\xc3(.json"]:
        fd = os.open(root + b"/" + name, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, encode(session_doc("x")))
        os.close(fd)
    put_session(sessions_dir, "marker")
    wait_until(lambda: listed(server) == ["marker"], 5)
    assert server.get("/readyz").json()["sessions"] == 1
    assert server.raw("GET", "/api/v2/jobs/%ff%fe").status_code == 400


@pytest.mark.timeout(120)
def test_too_few_file_descriptors(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    for n in range(40):
        put_session(sessions_dir, f"j{n}")
    # no cache: every GET opens its file; 64 descriptors cannot serve 48 busy connections
    server = serve(
        sessions_dir,
        env={"SESSIONS_CACHE_MAX_ENTRIES": "0", "SESSIONS_LOG_LEVEL": "warning"},
        prefix=("prlimit", "--nofile=64:64", "--"),
    )
    statuses: dict[int, int] = {}
    clients = []
    try:
        for _ in range(48):
            clients.append(httpx.Client(base_url=server.base_url, timeout=5))
        for round_ in range(5):
            for n, client in enumerate(clients):
                try:
                    response = client.get(f"/api/v2/jobs/j{(n + round_) % 40}")
                except httpx.HTTPError:
                    statuses[0] = statuses.get(0, 0) + 1  # refused at accept(): no descriptor left
                    continue
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    assert response.content == (sessions_dir / f"j{(n + round_) % 40}.json").read_bytes()
    finally:
        for client in clients:
            client.close()
    assert set(statuses) <= {0, 200, 503}, statuses  # failing cleanly: never a 500
    assert server.process.poll() is None
    # once the pressure is gone, everything is served and changes show again
    for n in range(40):
        wait_until(lambda n=n: server.get(f"/api/v2/jobs/j{n}").status_code == 200, 10)
    put_session(sessions_dir, "after")
    wait_until(lambda: "after" in listed(server), 10)


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    # Not under pytest's tmp_path (mode 700): the unprivileged server must be able to reach it.
    folder = Path(tempfile.mkdtemp(prefix="sessions-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_unreadable_files(shared_folder: Path, serve: Callable[..., Server]) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the server as an unprivileged user")
    put_session(shared_folder, "readable")
    secret = shared_folder / "secret.json"
    secret.write_bytes(encode(session_doc("secret")))
    secret.chmod(0)
    for path in shared_folder.iterdir():
        if path != secret:
            path.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    try:
        server = serve(shared_folder, prefix=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"))
    except AssertionError as exc:
        pytest.skip(f"the unprivileged server could not start here: {str(exc)[:200]}")
    detail = server.get("/api/v2/jobs/secret").json()["detail"]
    assert "unreadable" in detail and "ermission" in detail
    assert listed(server) == ["readable"]
    assert metric(server, "sessions_invalid_files") == 1
    secret.chmod(0o644)
    os.utime(secret)  # a permission change alone is a ctime change: the rescan sees it too
    wait_until(lambda: server.get("/api/v2/jobs/secret").status_code == 200, 10)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_flood_of_changes(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    ids = [f"f{n}" for n in range(1000)]
    for job_id in ids:
        put_session(sessions_dir, job_id)
    server = serve(sessions_dir, env={"SESSIONS_LOG_LEVEL": "warning"})
    events = 0
    slowest = 0.0
    started = time.monotonic()
    for version in range(50):  # 1,000 files x 50 rewrites: 100,000 writes, more events
        for job_id in ids:
            write_in_place(sessions_dir / f"{job_id}.json", encode(session_doc(job_id, version=version)))
            events += 1
        probe = time.monotonic()
        assert server.get("/livez").status_code == 200
        slowest = max(slowest, time.monotonic() - probe)
        if time.monotonic() - started > 150:
            break
    assert events >= 20_000
    assert slowest < 1.0, f"/livez took {slowest:.3f}s during the flood"
    wait_until(lambda: agrees_with_folder(server, sessions_dir), 60, what="agreement after the flood")
    fds = len(os.listdir(f"/proc/{server.process.pid}/fd"))
    assert fds < 100
