"""The folder is the truth: a stateful property test drives random sequences of file operations
(create, in-place rewrite, chunked slow write, write-then-rename, delete, corrupt, repair, touch)
over a few dozen ids on a real folder watched by the real server. After each operation, once the
folder is quiet, every GET (body, stale header, 404 reason), the whole list (items, order, pages,
X-Total-Count), readiness's count and the invalid-files metric agree with the folder exactly.
Run in each watch mode: native events, polling, and off with a short rescan."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from tests.support import Server, encode, session_doc, wait_until, write_atomic, write_in_chunks, write_in_place
from tests.support.reliability import Expected, metric, service_agrees, summary_of

MAX_FILE_BYTES = 8192
MODES = {
    "auto": {"SESSIONS_WATCH": "auto"},  # native events alone (the 60 s rescan is the only net)
    "poll": {"SESSIONS_WATCH": "poll", "SESSIONS_POLL_INTERVAL_MS": "100"},
    "off": {"SESSIONS_WATCH": "off", "SESSIONS_RESCAN_INTERVAL_S": "0.2"},
}
# A few dozen ids, of every shape the pattern allows: UUIDs as writers name them, dots, dashes.
IDS = (
    [f"job-{n}" for n in range(20)]
    + [f"3f1c2a9e-1b2c-4d5e-8f90-12345678{n:04d}" for n in range(6)]
    + ["a", "A.b_c-d", "9.json.bak-x", "x" * 128]
)
SETTLE_S = 8.0  # a guard for a busy 2-core CI machine; auto settles in ~0.1 s, poll/off in ~0.3 s
BASE = datetime(2024, 1, 1, tzinfo=UTC)
OFFSETS = [timedelta(0), timedelta(hours=2), timedelta(hours=-5, minutes=-30)]
# Corruptions, and a word the 404 problem detail must contain for a file that was never valid.
CORRUPTIONS = {
    "empty": (b"", "empty"),
    "truncated": (b'{"job_id": "x', "not JSON"),
    "array": (b"[1, 2]", "not a JSON object"),
    "not utf-8": (b'{"s": "\xff\xfe"}', "not UTF-8"),
    "other job_id": (b'{"job_id": "someone-else"}', "does not match"),
    "too large": (b'{"pad": "' + b"p" * MAX_FILE_BYTES + b'"}', "larger than"),
}
WRITERS: dict[str, Callable[[Path, bytes], None]] = {
    "in place": write_in_place,
    "chunked": lambda path, data: write_in_chunks(path, data, chunks=5, pause=0.003),
    "rename": write_atomic,
}


@dataclass
class FileState:
    content: bytes | None = None  # None: no file
    valid: bool = False
    reason: str = ""  # for an invalid file: a word of its reason
    last_valid: bytes | None = None  # what is served (stale) while the file is invalid
    sort_key: tuple[int, str] | None = None  # of the last valid version, as the list orders it


class FolderIsTheTruth(RuleBasedStateMachine):
    server: Server
    folder: Path

    def __init__(self) -> None:
        super().__init__()
        self.client = httpx.Client(base_url=self.server.base_url, timeout=10)
        self.files: dict[str, FileState] = {}
        self.clock = 0

    # --- the model --------------------------------------------------------------------------------

    def expectations(self) -> dict[str, Expected]:
        expected = {}
        for job_id in IDS:
            state = self.files.get(job_id, FileState())
            if state.content is None or state.last_valid is None:
                expected[job_id] = Expected(404)
            else:
                item = summary_of(job_id, state.last_valid)
                expected[job_id] = Expected(200, state.last_valid, not state.valid, item, state.sort_key)
        return expected

    def agreement(self) -> str | None:
        problem = service_agrees(self.client, self.expectations())
        if problem is not None:
            return problem
        for job_id, state in self.files.items():
            if state.last_valid is not None:
                continue
            problem_ = self.client.get(f"/api/v2/jobs/{job_id}").json()
            if state.content is None and problem_["type"] != "/problems/session-not-found":
                return f"{job_id}: no file, but the 404 says {problem_}"  # a deleted file is forgotten
            if state.content is not None and state.reason not in problem_["detail"]:
                return f"{job_id}: 404 detail {problem_['detail']!r} does not say {state.reason!r}"
        invalid = sum(1 for state in self.files.values() if state.content is not None and not state.valid)
        counted = metric(self.server, "sessions_invalid_files")
        if counted != invalid:
            return f"sessions_invalid_files is {counted}, the folder has {invalid} invalid files"
        return None

    def settle(self, what: str) -> None:
        wait_until(lambda: self.agreement() is None, SETTLE_S, what=f"agreement after {what}")

    def path(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.json"

    def valid_file(self, job_id: str, body: bytes) -> None:
        state = self.files.setdefault(job_id, FileState())
        mtime = self.path(job_id).stat().st_mtime_ns
        item = summary_of(job_id, body)
        instant = mtime
        if item["updated_at"] is not None:
            instant = int(datetime.fromisoformat(item["updated_at"]).timestamp()) * 1_000_000_000
        state.content, state.valid, state.reason, state.last_valid = body, True, "", body
        state.sort_key = (-instant, job_id)

    # --- operations -----------------------------------------------------------------------------------

    @initialize()
    def empty_folder(self) -> None:
        for path in self.folder.iterdir():
            path.unlink()
        self.settle("emptying the folder")

    @rule(
        job_id=st.sampled_from(IDS),
        writer=st.sampled_from(sorted(WRITERS)),
        tick=st.sampled_from([0, 1, 1, 7]),  # 0: the same instant as the last write, a tie
        offset=st.sampled_from([*OFFSETS, None]),  # None: no updated_at, ordered by mtime
        status=st.sampled_from(["running", "pending_hitl", "completed", "weird-status"]),
    )
    def write(self, job_id: str, writer: str, tick: int, offset: timedelta | None, status: str) -> None:
        self.clock += tick
        updated_at = None
        if offset is not None:
            moment = (BASE + timedelta(seconds=self.clock)).astimezone(timezone(offset))
            updated_at = moment.isoformat().replace("+00:00", "Z")
        body = encode(session_doc(job_id, status=status, updated_at=updated_at, step=self.clock))
        WRITERS[writer](self.path(job_id), body)
        self.valid_file(job_id, body)
        self.settle(f"{writer} write of {job_id}")

    @rule(job_id=st.sampled_from(IDS), kind=st.sampled_from(sorted(CORRUPTIONS)), atomic=st.booleans())
    def corrupt(self, job_id: str, kind: str, atomic: bool) -> None:
        garbage, reason = CORRUPTIONS[kind]
        (write_atomic if atomic else write_in_place)(self.path(job_id), garbage)
        state = self.files.setdefault(job_id, FileState())
        state.content, state.valid, state.reason = garbage, False, reason
        self.settle(f"corrupting {job_id} ({kind})")

    @rule(job_id=st.sampled_from(IDS))
    def repair(self, job_id: str) -> None:
        """Put back the last valid bytes (or a first valid version): the same bytes the service
        still serves as stale must turn fresh again."""
        state = self.files.get(job_id)
        if state is None or state.content is None or state.valid:
            return
        body = state.last_valid or encode(session_doc(job_id, updated_at=None))
        write_atomic(self.path(job_id), body)
        self.valid_file(job_id, body)
        self.settle(f"repairing {job_id}")

    @rule(job_id=st.sampled_from(IDS))
    def delete(self, job_id: str) -> None:
        self.path(job_id).unlink(missing_ok=True)
        self.files[job_id] = FileState()  # a later file has no valid past
        self.settle(f"deleting {job_id}")

    @rule(job_id=st.sampled_from(IDS))
    def touch(self, job_id: str) -> None:
        """A new mtime, the same bytes: nothing changes, except the place in the list of a
        session without updated_at (ordered by its file's mtime)."""
        state = self.files.get(job_id)
        if state is None or state.content is None:
            return
        os.utime(self.path(job_id))
        if state.valid:
            self.valid_file(job_id, state.content)
        self.settle(f"touching {job_id}")

    @invariant()
    def agrees_with_the_folder(self) -> None:
        problem = self.agreement()  # still, a moment after the operation settled
        assert problem is None, problem

    def teardown(self) -> None:
        self.client.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", list(MODES))
def test_the_folder_is_the_truth(mode: str, sessions_dir: Path, serve: Callable[..., Server]) -> None:
    env = {**MODES[mode], "SESSIONS_MAX_FILE_BYTES": str(MAX_FILE_BYTES), "SESSIONS_LOG_LEVEL": "warning"}
    FolderIsTheTruth.server = serve(sessions_dir, env=env)
    FolderIsTheTruth.folder = sessions_dir
    run_state_machine_as_test(
        FolderIsTheTruth,
        settings=settings(
            max_examples=4,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        ),
    )
    assert FolderIsTheTruth.server.process.poll() is None
