"""Writers that announce, on a real network filesystem (sshfs over a loopback sshd: tests/support/netfs.py,
attribute cache 3 s), with the real server polling it as `auto` chooses there: `SessionWriter`'s
announcements reach the service long before any poll would, and faults of the journals (rotation
while read, truncation, a writer that died mid-line, a deleted journal or folder, garbage) cost
freshness at most: once the folder is quiet the service equals it (docs/network-volumes.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sessions_client import SessionWriter
from sessions_client import writer as writer_module

from tests.support import Server, listed, netfs, put_session, session_doc, wait_until
from tests.support.reliability import metric

pytestmark = pytest.mark.slow

# Guards, not figures (bench/netvolume.py measures them): an announcement is read within ~0.1 s;
# with the poll held off, nothing else could show the change within this.
ANNOUNCED_S = 8.0
SETTLED_S = 40.0  # the poll and a rescan: the folder's truth wins in the end
QUIET_POLL = {"SESSIONS_POLL_INTERVAL_MS": "600000", "SESSIONS_RESCAN_INTERVAL_S": "3600"}


def body(server: Server, job_id: str) -> bytes | None:
    response = server.get(f"/api/v2/jobs/{job_id}")
    return response.content if response.status_code == 200 else None


def folder_truth(folder: Path) -> dict[str, bytes]:
    return {path.stem: path.read_bytes() for path in folder.glob("*.json")}


def equals_folder(server: Server, folder: Path) -> bool:
    truth = folder_truth(folder)
    return sorted(listed(server)) == sorted(truth) and all(
        body(server, job_id) == data for job_id, data in truth.items()
    )


def test_announced_changes_arrive_without_waiting_for_the_poll(
    network_folder: netfs.NetworkFolder, serve: Callable[..., Server]
) -> None:
    server_side = network_folder.server_path  # the writer is another machine: it writes on the server
    for index in range(5):
        put_session(server_side, f"job-{index}", status="running")
    writer = SessionWriter(server_side)  # its journal exists before the service starts
    server = serve(network_folder.mount_path, env=QUIET_POLL)
    assert sorted(listed(server)) == [f"job-{index}" for index in range(5)]
    wait_until(lambda: metric(server, "sessions_announcement_journals") == 1, ANNOUNCED_S, what="the journal found")

    for round_ in range(3):
        started = time.monotonic()
        documents = {f"job-{index}": session_doc(f"job-{index}", status="running", step=round_) for index in range(5)}
        for job_id, document in documents.items():
            writer.save(job_id, document)
        for job_id in documents:
            expected = (server_side / f"{job_id}.json").read_bytes()
            wait_until(lambda job_id=job_id, expected=expected: body(server, job_id) == expected, ANNOUNCED_S)
        assert time.monotonic() - started < ANNOUNCED_S
    writer.save("new-1", {"status": "pending"})
    writer.delete("job-0")
    wait_until(lambda: body(server, "new-1") is not None, ANNOUNCED_S, what="the created session")
    wait_until(lambda: server.get("/api/v2/jobs/job-0").status_code == 404, ANNOUNCED_S, what="the deletion")
    assert metric(server, "sessions_announcements_read_total") >= 17
    assert metric(server, "sessions_announcement_malformed_lines_total") == 0
    assert equals_folder(server, server_side)


def test_journal_faults_cost_freshness_never_correctness(
    network_folder: netfs.NetworkFolder, serve: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    server_side = network_folder.server_path
    journals = server_side / ".announce"
    for index in range(6):
        put_session(server_side, f"job-{index}", status="running")
    monkeypatch.setattr(writer_module, "ROTATE_BYTES", 2048)  # rotations within the test
    writer = SessionWriter(server_side)
    server = serve(network_folder.mount_path, env={"SESSIONS_RESCAN_INTERVAL_S": "10"})

    def save_all(step: int) -> None:
        for index in range(6):
            writer.save(f"job-{index}", session_doc(f"job-{index}", status="running", step=step))

    # A writer that died mid-line, and garbage: ignored, counted.
    (journals / "deadhost-1-0badf00d-1.journal").write_bytes(b"\njob-1\n../../etc/passwd\njob-2-tor")
    wait_until(lambda: metric(server, "sessions_announcement_malformed_lines_total") == 1, SETTLED_S, what="garbage")
    save_all(1)
    # Rotation while the reader reads: ~40 bytes a line, a journal every ~50 announcements.
    for step in range(2, 8):
        save_all(step)
        for index in range(40):
            writer.announce(f"job-{index % 6}")
    # The writer's journal truncated, then another journal deleted, then the whole folder.
    current = max(journals.glob(f"{writer._journal().writer_id}-*.journal"), key=lambda path: path.stat().st_mtime)
    current.write_bytes(b"")
    save_all(8)
    (journals / "deadhost-1-0badf00d-1.journal").unlink()
    save_all(9)
    for path in journals.iterdir():
        path.unlink()
    journals.rmdir()
    save_all(10)
    writer.delete("job-5")
    put_session(server_side, "unannounced", status="running")  # a writer that knows nothing

    wait_until(lambda: equals_folder(server, server_side), SETTLED_S, what="the service equal to the folder")
    # And the reader still follows the writer (its next journal, in the folder made again).
    save_all(11)
    wait_until(lambda: equals_folder(server, server_side), ANNOUNCED_S * 2, what="announcements after the faults")
    server_logs = "\n".join(server.logs())
    assert "Traceback" not in server_logs


def test_announcements_resume_after_the_file_server_comes_back(
    network_folder: netfs.NetworkFolder, serve: Callable[..., Server]
) -> None:
    server_side = network_folder.server_path
    put_session(server_side, "job-1", status="running")
    writer = SessionWriter(server_side)
    server = serve(network_folder.mount_path, env=QUIET_POLL)
    writer.save("job-1", session_doc("job-1", status="running", step=1))
    wait_until(lambda: body(server, "job-1") == (server_side / "job-1.json").read_bytes(), ANNOUNCED_S)
    threads = len(list(Path(f"/proc/{server.process.pid}/task").iterdir()))
    network_folder.kill_server()
    writer.save("job-1", session_doc("job-1", status="running", step=2))  # unseen while the server is away
    time.sleep(2.0)  # the reader meets the failure (a few of its polls), without piling up threads
    assert server.get("/livez").status_code == 200
    assert len(list(Path(f"/proc/{server.process.pid}/task").iterdir())) <= threads + 2
    network_folder.start_server()
    wait_until(lambda: body(server, "job-1") == (server_side / "job-1.json").read_bytes(), SETTLED_S, what="catch-up")
    writer.save("job-1", session_doc("job-1", status="running", step=3))
    wait_until(lambda: body(server, "job-1") == (server_side / "job-1.json").read_bytes(), ANNOUNCED_S, what="step 3")
