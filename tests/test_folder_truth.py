"""The folder is the truth (issue 5): random sequences of file operations on a real folder, with
the real watcher, in every watch mode; after each one settles, every GET and the list agree with
the folder exactly, stale-on-invalid included. And torn writes are never served."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from tests.support import (
    Server,
    encode,
    session_doc,
    start_server,
    wait_until,
    write_atomic,
    write_in_chunks,
    write_in_place,
)

MODES = {
    "auto": {"SESSIONS_WATCH": "auto"},
    "poll": {"SESSIONS_WATCH": "poll", "SESSIONS_POLL_INTERVAL_MS": "100"},
    "off": {"SESSIONS_WATCH": "off", "SESSIONS_RESCAN_INTERVAL_S": "0.2"},
}
IDS = [f"job-{n}" for n in range(12)] + ["3f1c2a9e-1b2c-4d5e-8f90-123456789abc"]
SETTLE_S = 10.0  # a guard: auto mode settles in tens of ms, poll and off in a few hundred


@pytest.fixture(scope="module", params=list(MODES))
def truth_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("sessions")
    server = start_server(folder, tmp_path_factory.mktemp("logs"), env=MODES[request.param])
    server.folder = folder  # type: ignore[attr-defined]
    yield server
    assert server.stop() == 0


@dataclass
class FileModel:
    content: bytes | None = None  # the file's bytes; None when there is no file
    valid: bool = False
    last_valid: bytes | None = None  # what the service must serve while the file is invalid
    updated: int = 0


@dataclass
class Model:
    files: dict[str, FileModel] = field(default_factory=dict)
    clock: int = 0

    def expected_list(self) -> list[str]:
        served = [(m.updated, job_id) for job_id, m in self.files.items() if m.last_valid is not None]
        return [job_id for _, job_id in sorted(served, key=lambda item: (-item[0], item[1]))]


def document(job_id: str, model: Model, **extra: object) -> tuple[bytes, int]:
    model.clock += 1
    updated_at = f"2024-01-01T{model.clock // 3600:02d}:{model.clock // 60 % 60:02d}:{model.clock % 60:02d}Z"
    return encode(session_doc(job_id, updated_at=updated_at, step=model.clock, **extra)), model.clock  # type: ignore[arg-type]


def expectation(model: FileModel | None) -> tuple[int, bytes | None, bool]:
    """(status, body, stale) that GET must answer for a file in this state."""
    if model is None or model.content is None:
        return 404, None, False
    if model.valid:
        return 200, model.content, False
    if model.last_valid is not None:
        return 200, model.last_valid, True
    return 404, None, False


def agrees(client: httpx.Client, job_id: str, model: FileModel | None) -> bool:
    status, body, stale = expectation(model)
    response = client.get(f"/api/v2/jobs/{job_id}")
    if response.status_code != status:
        return False
    if status == 200:
        return response.content == body and (response.headers.get("x-session-stale") == "true") == stale
    return True


class FolderIsTheTruth(RuleBasedStateMachine):
    server: Server

    def __init__(self) -> None:
        super().__init__()
        self.folder: Path = self.server.folder  # type: ignore[attr-defined]
        self.client = httpx.Client(base_url=self.server.base_url, timeout=10)
        self.model = Model()

    @initialize()
    def empty_folder(self) -> None:
        for path in self.folder.iterdir():
            path.unlink()
        wait_until(lambda: self.client.get("/api/v2/jobs").json() == [], SETTLE_S, what="an empty list")

    def settle(self, job_id: str) -> None:
        model = self.model.files.get(job_id)
        wait_until(lambda: agrees(self.client, job_id, model), SETTLE_S, what=f"{job_id} to settle as {model}")

    def _valid(self, job_id: str, write: str) -> None:
        data, updated = document(job_id, self.model, status="running")
        path = self.folder / f"{job_id}.json"
        {"in place": write_in_place, "chunked": write_in_chunks, "rename": write_atomic}[write](path, data)
        model = self.model.files.setdefault(job_id, FileModel())
        model.content, model.valid, model.last_valid, model.updated = data, True, data, updated
        self.settle(job_id)

    @rule(job_id=st.sampled_from(IDS), write=st.sampled_from(["in place", "chunked", "rename"]))
    def write_valid(self, job_id: str, write: str) -> None:
        self._valid(job_id, write)

    @rule(job_id=st.sampled_from(IDS), garbage=st.sampled_from([b"", b'{"job_id": "x', b"[1, 2]", b"\xff\xfe"]))
    def corrupt(self, job_id: str, garbage: bytes) -> None:
        write_in_place(self.folder / f"{job_id}.json", garbage)
        model = self.model.files.setdefault(job_id, FileModel())
        model.content, model.valid = garbage, False
        self.settle(job_id)

    @rule(job_id=st.sampled_from(IDS))
    def repair(self, job_id: str) -> None:
        self._valid(job_id, "rename")

    @rule(job_id=st.sampled_from(IDS))
    def delete(self, job_id: str) -> None:
        path = self.folder / f"{job_id}.json"
        if path.exists():
            path.unlink()
        self.model.files[job_id] = FileModel()  # a later file starts with no valid past
        self.settle(job_id)

    @rule(job_id=st.sampled_from(IDS))
    def touch(self, job_id: str) -> None:
        path = self.folder / f"{job_id}.json"
        if path.exists():
            os.utime(path)
        self.settle(job_id)

    @rule(job_id=st.sampled_from(IDS))
    def same_size_rewrite(self, job_id: str) -> None:
        """Same length, written twice quickly: metadata alone cannot tell the versions apart."""
        model = self.model.files.get(job_id)
        if model is None or not model.valid or model.content is None:
            return
        flipped = model.content.replace(b'"running"', b'"pending"')
        if flipped == model.content:
            flipped = model.content.replace(b'"pending"', b'"running"')
        write_in_place(self.folder / f"{job_id}.json", flipped)
        model.content = model.last_valid = flipped
        self.settle(job_id)

    @invariant()
    def list_and_every_get_agree(self) -> None:
        expected = self.model.expected_list()
        listed = [item["job_id"] for item in self.client.get("/api/v2/jobs?limit=1000").json()]
        assert listed == expected
        for job_id in IDS:
            assert agrees(self.client, job_id, self.model.files.get(job_id)), job_id

    def teardown(self) -> None:
        self.client.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_folder_is_the_truth(truth_server: Server) -> None:
    FolderIsTheTruth.server = truth_server
    run_state_machine_as_test(
        FolderIsTheTruth,
        settings=settings(
            max_examples=12,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        ),
    )


@pytest.mark.timeout(120)
def test_torn_writes_are_never_served(sessions_dir: Path, tmp_path: Path) -> None:
    versions = [encode(session_doc("big", version=v, payload=f"{v}" * 400_000)) for v in range(12)]
    path = sessions_dir / "big.json"
    path.write_bytes(versions[0])
    server = start_server(sessions_dir, tmp_path, env={"SESSIONS_LOG_LEVEL": "warning"})
    seen: set[int] = set()
    broken: list[str] = []
    done = threading.Event()

    def reader() -> None:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            for _ in range(100_000):
                if done.is_set():
                    return
                response = client.get("/api/v2/jobs/big")
                if response.status_code != 200:
                    broken.append(f"status {response.status_code}")
                    continue
                try:
                    seen.add(versions.index(response.content))
                except ValueError:
                    broken.append(f"a body of {len(response.content)} bytes that is no version")

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        for data in versions[1:]:
            write_in_chunks(path, data, chunks=32, pause=0.002)  # readers can see it half-written
            wait_until(lambda data=data: server.get("/api/v2/jobs/big").content == data, 10)
    finally:
        done.set()
        for thread in readers:
            thread.join(30)
        server.stop()
    assert not broken, broken[:5]
    assert len(seen) >= 6  # the readers really did see the versions go by
