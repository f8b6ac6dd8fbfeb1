"""The warm-start file (app.store.warmstart; docs/network-volumes.md, "Warm start"): its format
and checks, and the warm-up that starts from it, over real folders.

The reconciler runs here as it does on a network filesystem (the plan `auto` makes for sshfs);
its forced stats are plain ones on the local disk of the tests. The same warm start on a real
sshfs mount, through the service: tests/test_network_volume.py.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from pathlib import Path

import pytest

from app.settings import load_settings
from app.store import fileversion, sessionfile, warmstart
from app.store.fileversion import Version
from app.store.reconciler import WARM_START_RECHECK_S, Reconciler
from app.store.store import SessionStore
from app.store.watchmode import WatchPlan
from tests.support import encode, put_session, session_doc, wait_until, write_in_place

NETWORK = WatchPlan("poll", "auto", "fuse.sshfs", "network filesystem")
LOCAL = WatchPlan("native", "auto", "ext4", "local filesystem")
AN_HOUR_AGO = time.time() - 3600
WRITTEN_S = 10.0  # a guard: the writer thread writes a few files' records


def old(folder: Path, job_id: str, **fields: object) -> bytes:
    """A session written an hour ago: old enough that no later write can share its times."""
    put_session(folder, job_id, **fields)  # type: ignore[arg-type]
    path = folder / f"{job_id}.json"
    os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))
    return path.read_bytes()


def warmed(folder: Path, watch: WatchPlan = NETWORK, **env: str) -> tuple[SessionStore, Reconciler]:
    """A store warmed up as the reconciler does at start-up (its thread not started)."""
    settings = load_settings({"SESSIONS_DIR": str(folder), "SESSIONS_WATCH": "poll", **env})
    store = SessionStore(folder, cache_max_entries=1000, cache_max_bytes=10**8, max_file_bytes=10**6)
    reconciler = Reconciler(store, settings, watch=watch)
    reconciler._warm_up()
    return store, reconciler


def written(reconciler: Reconciler) -> dict[str, int]:
    """The outcome of the warm-start write this warm-up started, once it is over ({} if none)."""
    writer = reconciler._warm_start_writer
    if writer is not None:
        writer.join(WRITTEN_S)
        assert not writer.is_alive()
    return reconciler.stats.warm_start_writes


def served(store: SessionStore, job_id: str) -> bytes | None:
    document = store.current_document(job_id)
    return document.body if document is not None else None


# --- the file --------------------------------------------------------------------------------------


def records(count: int = 3) -> list[tuple[str, Version, bytes]]:
    return [
        (f"job-{n}", Version(100 + n, 10**18 + n, 2 * 10**18 + n), encode(session_doc(f"job-{n}")))
        for n in range(count)
    ]


def test_what_is_written_is_read_back(tmp_path: Path) -> None:
    before = time.time_ns()
    size = warmstart.write(tmp_path, records(), 3)
    assert size == warmstart.path(tmp_path).stat().st_size
    contents = warmstart.read(tmp_path, 10**6)
    assert before <= contents.written_at_ns <= time.time_ns()
    assert warmstart.written_at_ns(tmp_path) == contents.written_at_ns
    assert contents.records == {job_id: warmstart.Record(version, body) for job_id, version, body in records()}
    assert [path.name for path in (tmp_path / warmstart.FOLDER).iterdir()] == [warmstart.NAME]  # no temporary left


def test_many_records_cross_the_readers_chunks(tmp_path: Path) -> None:
    many = [(f"job-{n}", Version(n, n, n), os.urandom(n % 5000)) for n in range(3000)]  # incompressible: MiBs
    warmstart.write(tmp_path, many, len(many))
    assert warmstart.read(tmp_path, 10**6).records == {job_id: warmstart.Record(v, body) for job_id, v, body in many}


def test_none_there(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        warmstart.read(tmp_path, 10**6)
    assert warmstart.written_at_ns(tmp_path) is None


def damage_cases(whole: bytes) -> dict[str, bytes]:
    header = len(warmstart.MAGIC) + warmstart.HEADER.size
    middle = header + (len(whole) - header) // 2
    return {
        "empty": b"",
        "another format": b"job-sessions warm-start 2\n" + whole[len(warmstart.MAGIC) :],
        "cut in the header": whole[: header - 3],
        "cut in the records": whole[:middle],
        "cut before the checksum": whole[:-2],
        "a byte changed": whole[:middle] + bytes([whole[middle] ^ 0xFF]) + whole[middle + 1 :],
        "bytes after the end": whole + b"\0",
        "a header that counts one more": whole[: len(warmstart.MAGIC)] + warmstart.HEADER.pack(1, 4) + whole[header:],
        "a header that counts one fewer": whole[: len(warmstart.MAGIC)] + warmstart.HEADER.pack(1, 2) + whole[header:],
    }


@pytest.mark.parametrize("case", list(damage_cases(b"x" * 100)))
def test_a_file_that_is_not_whole_is_never_used(tmp_path: Path, case: str) -> None:
    warmstart.write(tmp_path, records(), 3)
    path = warmstart.path(tmp_path)
    path.write_bytes(damage_cases(path.read_bytes())[case])
    with pytest.raises(warmstart.WarmStartError):
        warmstart.read(tmp_path, 10**6)


def forged(tmp_path: Path, job_id: bytes, body: bytes, size: int = 10) -> None:
    record = warmstart.RECORD.pack(len(job_id), len(body), size, 1, 1) + job_id + body
    warmstart.path(tmp_path).parent.mkdir(exist_ok=True)
    warmstart.path(tmp_path).write_bytes(warmstart.MAGIC + warmstart.HEADER.pack(1, 1) + zlib.compress(record))


def test_records_are_checked_as_files_are(tmp_path: Path) -> None:
    forged(tmp_path, b"../escape", b"{}")
    with pytest.raises(warmstart.WarmStartError, match="job id"):
        warmstart.read(tmp_path, 10**6)
    forged(tmp_path, b"big", b"x" * 101, size=101)
    with pytest.raises(warmstart.WarmStartError, match="SESSIONS_MAX_FILE_BYTES"):
        warmstart.read(tmp_path, 100)


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    (tmp_path / warmstart.FOLDER).mkdir()

    def failing() -> object:
        yield from records(2)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        warmstart.write(tmp_path, failing(), 3)  # type: ignore[arg-type]
    assert list((tmp_path / warmstart.FOLDER).iterdir()) == []


def test_the_temporary_files_of_a_writer_that_died_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / warmstart.FOLDER
    folder.mkdir()
    abandoned, current = folder / "sessions.1.dead.tmp", folder / "sessions.2.busy.tmp"
    abandoned.write_bytes(b"half")
    current.write_bytes(b"another replica writing now")
    os.utime(abandoned, (AN_HOUR_AGO - 60, AN_HOUR_AGO - 60))
    warmstart.write(tmp_path, records(), 3)
    assert sorted(path.name for path in folder.iterdir()) == sorted([current.name, warmstart.NAME])


# --- the warm-up -----------------------------------------------------------------------------------


def test_a_replica_leaves_what_it_read_and_the_next_starts_from_it(sessions_dir: Path) -> None:
    bodies = {f"done-{n}": old(sessions_dir, f"done-{n}", status="completed", n=n) for n in range(20)}
    bodies["live"] = old(sessions_dir, "live", status="running")
    put_session(sessions_dir, "new", status="completed")  # written now: too new to trust
    bodies["new"] = (sessions_dir / "new.json").read_bytes()
    first, reconciler = warmed(sessions_dir)
    assert reconciler.stats.warm_start_sessions == 0
    assert written(reconciler) == {"written": 1}
    recorded = warmstart.read(sessions_dir, 10**6).records
    assert sorted(recorded) == sorted(set(bodies) - {"new"})
    assert recorded["done-3"].body == bodies["done-3"]

    second, again = warmed(sessions_dir)
    # The finished sessions come from the file; the unfinished one and the new one are read.
    assert again.stats.warm_start_sessions == 20
    assert again._recheck_at is not None and again._recheck_at <= time.monotonic() + WARM_START_RECHECK_S
    for job_id, body in bodies.items():
        assert served(second, job_id) == body, job_id
        assert second.current_etag(job_id) == first.current_etag(job_id)
        assert second.signature(job_id) == first.signature(job_id)  # what later rescans compare
    assert second.stats()["sessions"] == len(bodies)
    assert written(again) == {}  # one file of 22 not in it: not worth writing again


def test_what_changed_since_is_read_from_the_folder(sessions_dir: Path) -> None:
    for n in range(10):
        old(sessions_dir, f"done-{n}", status="completed", n=n)
    _, reconciler = warmed(sessions_dir)
    assert written(reconciler) == {"written": 1}

    # Rewritten in place, same size, its modification time set back as `cp -p` would: only
    # the change time tells (which no writer can set back).
    same_size = encode(session_doc("done-1", status="completed", n=7))
    write_in_place(sessions_dir / "done-1.json", same_size)
    os.utime(sessions_dir / "done-1.json", (AN_HOUR_AGO, AN_HOUR_AGO))
    replaced = old(sessions_dir, "done-2", status="failed", n=2)  # replaced (temp file, rename)
    (sessions_dir / "done-3.json").unlink()
    (sessions_dir / "done-4.json").unlink()
    (sessions_dir / "done-4.json").symlink_to(sessions_dir / "done-5.json")  # now a link
    (sessions_dir / "done-6.json").write_bytes(b"{ half a document")  # now invalid
    added = old(sessions_dir, "added", status="completed")

    store, again = warmed(sessions_dir)
    assert again.stats.warm_start_sessions == 5  # done-0, 5, 7, 8, 9
    assert served(store, "done-1") == same_size
    assert served(store, "done-2") == replaced
    assert served(store, "done-3") is None
    assert store.current_document("done-4") is None and store.is_invalid("done-4")  # a link to a sibling's file
    assert store.is_invalid("done-6")
    assert served(store, "added") == added
    assert written(again) == {"written": 1}  # 6 of 10 changed: written again
    assert set(warmstart.read(sessions_dir, 10**6).records) == {"done-0", "done-1", "done-2", "done-5", "done-7",
                                                                 "done-8", "done-9", "added"}  # fmt: skip


def test_a_damaged_file_is_ignored_and_replaced(sessions_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    bodies = {f"done-{n}": old(sessions_dir, f"done-{n}", status="completed", n=n) for n in range(5)}
    _, reconciler = warmed(sessions_dir)
    written(reconciler)
    path = warmstart.path(sessions_dir)
    path.write_bytes(path.read_bytes()[:-10])
    with caplog.at_level(logging.INFO, logger="app.reconciler"):
        store, again = warmed(sessions_dir)
    assert again.stats.warm_start_sessions == 0
    assert all(served(store, job_id) == body for job_id, body in bodies.items())
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert warning.getMessage() == "cannot use the warm-start file: reading every session file"
    assert written(again) == {"written": 1}
    assert len(warmstart.read(sessions_dir, 10**6).records) == 5


def test_a_folder_it_cannot_write_to(sessions_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Where the file cannot be written (here `.warmstart` is a plain file; read-only or full
    volumes fail alike), the warm-up is whole and the failure said and counted."""
    old(sessions_dir, "done", status="completed")
    (sessions_dir / warmstart.FOLDER).write_bytes(b"not a folder")
    with caplog.at_level(logging.INFO, logger="app.reconciler"):
        store, reconciler = warmed(sessions_dir)
        assert written(reconciler) == {"failed": 1}
    assert served(store, "done") is not None
    assert "cannot write the warm-start file: the next replica to start reads every session file" in caplog.messages


def test_a_newer_file_from_another_replica_is_left_alone(sessions_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old(sessions_dir, "done", status="completed")
    real_read = warmstart.read

    def another_replica_writes_meanwhile(root: Path, max_body_bytes: int) -> warmstart.Contents:
        warmstart.write(root, [("other", Version(1, 1, 1), b"{}")], 1)  # after this warm-up began
        return real_read(root, max_body_bytes)

    monkeypatch.setattr(warmstart, "read", another_replica_writes_meanwhile)
    _, reconciler = warmed(sessions_dir)
    assert written(reconciler) == {"skipped": 1}
    assert set(real_read(sessions_dir, 10**6).records) == {"other"}


@pytest.mark.parametrize(
    ("watch", "env"), [(LOCAL, {}), (NETWORK, {"SESSIONS_WARM_START": "off"})], ids=["local disk", "turned off"]
)
def test_where_it_is_not_used(sessions_dir: Path, watch: WatchPlan, env: dict[str, str]) -> None:
    for n in range(5):
        old(sessions_dir, f"done-{n}", status="completed")
    warmstart.write(sessions_dir, [("done-0", fileversion.version(os.stat(sessions_dir / "done-0.json")), b"{}")], 1)
    before = warmstart.path(sessions_dir).read_bytes()
    store, reconciler = warmed(sessions_dir, watch, **env)
    assert reconciler.stats.warm_start_sessions == 0
    assert served(store, "done-0") == (sessions_dir / "done-0.json").read_bytes()  # not the file's "{}"
    assert written(reconciler) == {}
    assert warmstart.path(sessions_dir).read_bytes() == before


def test_a_warm_start_is_followed_by_a_full_rescan_soon(sessions_dir: Path) -> None:
    """However far apart rescans are: a change the client's cache hid at the warm-up is seen then."""
    for n in range(5):
        old(sessions_dir, f"done-{n}", status="completed")
    _, first = warmed(sessions_dir)
    written(first)
    settings = load_settings(
        {"SESSIONS_DIR": str(sessions_dir), "SESSIONS_WATCH": "poll", "SESSIONS_RESCAN_INTERVAL_S": "3600"}
    )
    store = SessionStore(sessions_dir, cache_max_entries=1000, cache_max_bytes=10**8, max_file_bytes=10**6)
    reconciler = Reconciler(store, settings, watch=NETWORK)
    reconciler.start()
    try:
        assert reconciler.ready.wait(30)
        assert reconciler.stats.warm_start_sessions == 5
        wait_until(
            lambda: reconciler.stats.rescans >= 1, 30 + WARM_START_RECHECK_S, what="the rescan after a warm start"
        )
    finally:
        reconciler.stop()


def test_the_version_ignores_inode_numbers(sessions_dir: Path) -> None:
    """A FUSE client numbers its own inodes: the same file has another number on each replica."""
    old(sessions_dir, "done", status="completed")
    st = os.stat(sessions_dir / "done.json")
    assert fileversion.version(st) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    assert sessionfile.read(sessions_dir, "done", 10**6).version == fileversion.version(st)
