"""The warm-start file (app.store.warmstart; docs/network-volumes.md, "Warm start"): its format
and checks, and the warm-up that starts from it, over real folders.

The reconciler runs here as it does on a network filesystem (the plan `auto` makes for sshfs);
its forced stats are plain ones on the local disk of the tests. The same warm start on a real
sshfs mount, through the service: tests/test_network_volume.py.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest

from app.settings import load_settings
from app.store import fileversion, sessionfile, warmstart
from app.store import reconciler as reconciler_module
from app.store.fileversion import Version
from app.store.reconciler import WARM_START_RECHECKS_S, Reconciler
from app.store.store import SessionStore
from app.store.watchmode import WatchPlan
from tests.support import encode, put_session, session_doc, wait_until, write_in_place

NETWORK = WatchPlan("poll", "auto", "fuse.sshfs", "network filesystem")
LOCAL = WatchPlan("native", "auto", "ext4", "local filesystem")
AN_HOUR_AGO = time.time() - 3600
LIMITS = warmstart.Limits(10**6, 10**6, 10**9)
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
    """The outcome of the warm-start write this warm-up decided on, once it is over ({} if none).
    (The reconciler's thread starts the writer once ready; these tests run the warm-up alone.)"""
    writer = reconciler._warm_start_writer
    if writer is not None:
        if writer.ident is None:
            writer.start()
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
    size = warmstart.write(tmp_path, records(), 3)
    assert size == warmstart.path(tmp_path).stat().st_size
    contents = warmstart.read(tmp_path, LIMITS)
    assert (
        contents.version == warmstart.current_version(tmp_path) == fileversion.version(warmstart.path(tmp_path).stat())
    )
    assert contents.records == {job_id: warmstart.Record(version, body) for job_id, version, body in records()}
    assert [path.name for path in tmp_path.iterdir()] == [warmstart.NAME]  # no temporary left


def test_many_records_cross_the_readers_chunks(tmp_path: Path) -> None:
    many = [(f"job-{n}", Version(n, n, n), os.urandom(n % 5000)) for n in range(3000)]  # incompressible: MiBs
    warmstart.write(tmp_path, many, len(many))
    assert warmstart.read(tmp_path, LIMITS).records == {job_id: warmstart.Record(v, body) for job_id, v, body in many}


def test_a_large_file_that_compresses_well_is_read_in_pieces(tmp_path: Path) -> None:
    """Tens of MiB of sessions from a few MiB of file: decompressed 8 MiB at a time, whole."""
    body = encode(session_doc("x", status="completed", log="line of output\n" * 500))
    many = [(f"job-{n}", Version(n, n, n), body.replace(b'"x"', f'"job-{n}"'.encode())) for n in range(5000)]
    size = warmstart.write(tmp_path, many, len(many))
    assert size < warmstart.DECOMPRESSED_CHUNK < sum(len(b) for _, _, b in many) // 2
    assert warmstart.read(tmp_path, LIMITS).records == {job_id: warmstart.Record(v, b) for job_id, v, b in many}
    assert warmstart.summary(tmp_path, LIMITS) == (warmstart.current_version(tmp_path), len(many))


def test_none_there(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        warmstart.read(tmp_path, LIMITS)
    assert warmstart.current_version(tmp_path) is None


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
        warmstart.read(tmp_path, LIMITS)


def forged(tmp_path: Path, job_id: bytes, body: bytes, size: int = 10) -> None:
    record = warmstart.RECORD.pack(len(job_id), len(body), size, 1, 1) + job_id + body
    warmstart.path(tmp_path).parent.mkdir(exist_ok=True)
    warmstart.path(tmp_path).write_bytes(warmstart.MAGIC + warmstart.HEADER.pack(1, 1) + zlib.compress(record))


def test_records_are_checked_as_files_are(tmp_path: Path) -> None:
    forged(tmp_path, b"../escape", b"{}")
    with pytest.raises(warmstart.WarmStartError, match="job id"):
        warmstart.read(tmp_path, LIMITS)
    forged(tmp_path, b"big", b"x" * 101, size=101)
    with pytest.raises(warmstart.WarmStartError, match="SESSIONS_MAX_FILE_BYTES"):
        warmstart.read(tmp_path, LIMITS._replace(body_bytes=100))


def test_it_never_holds_more_than_the_cache_would(tmp_path: Path) -> None:
    warmstart.write(tmp_path, records(3), 3)
    with pytest.raises(warmstart.WarmStartError, match="more than the cache holds"):
        warmstart.read(tmp_path, LIMITS._replace(records=2))
    body_bytes = sum(len(body) for _, _, body in records(3))
    with pytest.raises(warmstart.WarmStartError, match="more bytes of documents than the cache holds"):
        warmstart.read(tmp_path, LIMITS._replace(total_bytes=body_bytes - 1))
    assert len(warmstart.read(tmp_path, LIMITS._replace(records=3, total_bytes=body_bytes)).records) == 3


def test_a_small_file_that_unpacks_to_gigabytes_is_read_in_bounded_pieces(tmp_path: Path) -> None:
    """A zip bomb: 256 MiB of zeros compress to a quarter of a MiB, which one read takes in.
    Unpacked in bounded pieces, it is refused as soon as its first record claims to be longer
    than any file may be, having held a few pieces at most."""
    bomb = zlib.compressobj(9)
    with open(warmstart.path(tmp_path), "wb") as file:
        file.write(warmstart.MAGIC + warmstart.HEADER.pack(1, 1))
        file.write(bomb.compress(warmstart.RECORD.pack(1, 2**32 - 1, 1, 1, 1) + b"a"))
        for _ in range(256):
            file.write(bomb.compress(bytes(1 << 20)))
        file.write(bomb.flush())
    assert warmstart.path(tmp_path).stat().st_size < warmstart.READ_CHUNK
    tracemalloc.start()
    try:
        with pytest.raises(warmstart.WarmStartError, match="SESSIONS_MAX_FILE_BYTES"):
            warmstart.read(tmp_path, LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * warmstart.DECOMPRESSED_CHUNK


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    def failing() -> object:
        yield from records(2)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        warmstart.write(tmp_path, failing(), 3)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_the_temporary_files_of_a_writer_that_died_are_removed(tmp_path: Path) -> None:
    folder = tmp_path / warmstart.FOLDER
    folder.mkdir()
    abandoned, current = folder / "sessions.1.deadbeef.tmp", folder / "sessions.2.0badcafe.tmp"
    foreign = folder / "job-7.json.tmp"  # not ours, however old: the folder may be shared
    abandoned.write_bytes(b"half")
    current.write_bytes(b"another replica writing now")
    foreign.write_bytes(b"someone else's")
    os.utime(abandoned, (AN_HOUR_AGO - 60, AN_HOUR_AGO - 60))
    os.utime(foreign, (AN_HOUR_AGO - 60, AN_HOUR_AGO - 60))
    warmstart.write(folder, records(), 3)
    assert sorted(path.name for path in folder.iterdir()) == sorted([current.name, foreign.name, warmstart.NAME])


# --- the warm-up -----------------------------------------------------------------------------------


def test_a_replica_leaves_what_it_read_and_the_next_starts_from_it(sessions_dir: Path) -> None:
    bodies = {f"done-{n}": old(sessions_dir, f"done-{n}", status="completed", n=n) for n in range(20)}
    bodies["live"] = old(sessions_dir, "live", status="running")
    put_session(sessions_dir, "new", status="completed")
    in_a_minute = time.time() + 60
    os.utime(sessions_dir / "new.json", (in_a_minute, in_a_minute))  # too new to trust, however slow this test
    bodies["new"] = (sessions_dir / "new.json").read_bytes()
    first, reconciler = warmed(sessions_dir)
    assert reconciler.stats.warm_start_sessions == 0
    assert written(reconciler) == {"written": 1}
    recorded = warmstart.read(sessions_dir / warmstart.FOLDER, LIMITS).records
    assert sorted(recorded) == sorted(set(bodies) - {"new"})
    assert recorded["done-3"].body == bodies["done-3"]

    second, again = warmed(sessions_dir)
    # The finished sessions come from the file; the unfinished one and the new one are read.
    assert again.stats.warm_start_sessions == 20
    assert len(again._rechecks) == len(WARM_START_RECHECKS_S)
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
    kept = {"done-0", "done-1", "done-2", "done-5", "done-7", "done-8", "done-9", "added"}
    assert set(warmstart.read(sessions_dir / warmstart.FOLDER, LIMITS).records) == kept


def test_a_damaged_file_is_ignored_and_replaced(sessions_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    bodies = {f"done-{n}": old(sessions_dir, f"done-{n}", status="completed", n=n) for n in range(5)}
    _, reconciler = warmed(sessions_dir)
    written(reconciler)
    path = warmstart.path(sessions_dir / warmstart.FOLDER)
    path.write_bytes(path.read_bytes()[:-10])
    with caplog.at_level(logging.INFO, logger="app.reconciler"):
        store, again = warmed(sessions_dir)
    assert again.stats.warm_start_sessions == 0
    assert all(served(store, job_id) == body for job_id, body in bodies.items())
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert warning.getMessage() == "cannot use the warm-start file: reading every session file"
    assert written(again) == {"written": 1}
    assert len(warmstart.read(sessions_dir / warmstart.FOLDER, LIMITS).records) == 5


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

    def another_replica_writes_meanwhile(root: Path, limits: warmstart.Limits) -> warmstart.Contents:
        warmstart.write(root, [("other", Version(1, 1, 1), b"{}")], 1)  # after this warm-up began
        return real_read(root, limits)

    monkeypatch.setattr(warmstart, "read", another_replica_writes_meanwhile)
    _, reconciler = warmed(sessions_dir)
    assert written(reconciler) == {"skipped": 1}
    assert set(real_read(sessions_dir / warmstart.FOLDER, LIMITS).records) == {"other"}


def forge_a_finished_version(folder: Path, job_id: str) -> bytes:
    """A warm-start file that holds other bytes for `job_id` (a finished session too), with the
    version its file has now: taken if the file is used at all."""
    forged = encode(session_doc(job_id, status="completed", forged=True))
    warmstart.write(
        folder / warmstart.FOLDER, [(job_id, fileversion.version(os.stat(folder / f"{job_id}.json")), forged)], 1
    )
    return forged


@pytest.mark.parametrize(
    ("watch", "env"), [(LOCAL, {}), (NETWORK, {"SESSIONS_WARM_START": "off"})], ids=["local disk", "turned off"]
)
def test_where_it_is_not_used(sessions_dir: Path, watch: WatchPlan, env: dict[str, str]) -> None:
    for n in range(5):
        old(sessions_dir, f"done-{n}", status="completed")
    forged = forge_a_finished_version(sessions_dir, "done-0")
    before = warmstart.path(sessions_dir / warmstart.FOLDER).read_bytes()
    store, reconciler = warmed(sessions_dir, watch, **env)
    assert reconciler.stats.warm_start_sessions == 0
    assert served(store, "done-0") == (sessions_dir / "done-0.json").read_bytes() != forged
    assert written(reconciler) == {}
    assert warmstart.path(sessions_dir / warmstart.FOLDER).read_bytes() == before


def test_a_fifo_in_its_place_does_not_hold_the_warm_up(sessions_dir: Path) -> None:
    old(sessions_dir, "done", status="completed")
    (sessions_dir / warmstart.FOLDER).mkdir()
    os.mkfifo(warmstart.path(sessions_dir / warmstart.FOLDER))
    store, reconciler = warmed(sessions_dir)  # would block for ever opening the FIFO
    assert served(store, "done") == (sessions_dir / "done.json").read_bytes()


def test_a_link_in_place_of_its_folder_is_never_followed(sessions_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for n in range(3):
        old(sessions_dir, f"done-{n}", status="completed")
    (sessions_dir / warmstart.FOLDER).symlink_to(elsewhere)
    store, reconciler = warmed(sessions_dir)
    assert written(reconciler) == {"failed": 1}
    assert list(elsewhere.iterdir()) == []
    assert store.stats()["sessions"] == 3


def test_a_surprise_while_taking_from_it_costs_only_time(
    sessions_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Mocked: an error no rule expects (a bug) cannot be made real. Every file is read instead."""
    bodies = {f"done-{n}": old(sessions_dir, f"done-{n}", status="completed", n=n) for n in range(5)}
    written(warmed(sessions_dir)[1])

    def broken(name: str, dir_fd: int) -> os.stat_result:
        raise RuntimeError("a surprise")

    monkeypatch.setattr(fileversion, "forced_lstat", broken)
    with caplog.at_level(logging.ERROR, logger="app.reconciler"):
        store, reconciler = warmed(sessions_dir)
    assert reconciler.stats.warm_start_sessions == 0
    assert all(served(store, job_id) == body for job_id, body in bodies.items())
    assert "cannot start from the warm-start file: reading every session file" in caplog.messages


def test_a_record_that_is_not_a_valid_session_is_read_from_the_folder(sessions_dir: Path) -> None:
    body = old(sessions_dir, "done", status="completed")
    version = fileversion.version(os.stat(sessions_dir / "done.json"))
    warmstart.write(
        sessions_dir / warmstart.FOLDER, [("done", version, b'{"job_id": "another", "status": "completed"}')], 1
    )
    store, reconciler = warmed(sessions_dir)
    assert reconciler.stats.warm_start_sessions == 0
    assert served(store, "done") == body


def test_a_file_with_a_byte_order_mark_starts_warm_too(sessions_dir: Path) -> None:
    path = sessions_dir / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + encode(session_doc("bom", status="completed")))
    os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))
    first, reconciler = warmed(sessions_dir)
    written(reconciler)
    second, again = warmed(sessions_dir)
    assert again.stats.warm_start_sessions == 1
    assert served(second, "bom") == served(first, "bom") == path.read_bytes()[3:]
    assert second.signature("bom") == first.signature("bom")


def hidden_by_a_client_cache(folder: Path, job_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on the warm start's stats see `job_id`'s file as it is now, whatever it becomes:
    a FUSE daemon's own attribute cache, which no forced stat passes, mocked (it cannot be held
    on purpose here). The rescans' stats see the folder as it is."""
    cached = os.stat(folder / f"{job_id}.json", follow_symlinks=False)
    real_lstat = fileversion.forced_lstat
    name = f"{job_id}.json"
    monkeypatch.setattr(
        fileversion, "forced_lstat", lambda entry, dir_fd: cached if entry == name else real_lstat(entry, dir_fd)
    )


def running_without_rescans(folder: Path) -> tuple[SessionStore, Reconciler]:
    """A store and its reconciler, as the service runs them on a network mount, with full
    rescans turned off (SESSIONS_RESCAN_INTERVAL_S=0): only a recheck runs one."""
    settings = load_settings({"SESSIONS_DIR": str(folder), "SESSIONS_WATCH": "poll", "SESSIONS_RESCAN_INTERVAL_S": "0"})
    store = SessionStore(folder, cache_max_entries=1000, cache_max_bytes=10**8, max_file_bytes=10**6)
    return store, Reconciler(store, settings, watch=NETWORK)


def test_a_change_hidden_at_the_start_is_seen_by_the_recheck(
    sessions_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However far apart rescans are (here: never)."""
    for n in range(5):
        old(sessions_dir, f"done-{n}", status="completed")
    written(warmed(sessions_dir)[1])
    hidden_by_a_client_cache(sessions_dir, "done-1", monkeypatch)
    changed = encode(session_doc("done-1", status="completed", result="changed just before the start"))
    write_in_place(sessions_dir / "done-1.json", changed)
    monkeypatch.setattr(reconciler_module, "WARM_START_RECHECKS_S", (0.5, 1.0))
    store, reconciler = running_without_rescans(sessions_dir)
    reconciler.start()
    try:
        assert reconciler.ready.wait(30)
        assert reconciler.stats.warm_start_sessions == 5
        wait_until(lambda: served(store, "done-1") == changed, 30, what="the change, at the recheck")
        assert reconciler.stats.rescans >= 1  # rescans are off: only a recheck runs one
    finally:
        reconciler.stop()


def test_the_version_ignores_inode_numbers(sessions_dir: Path) -> None:
    """A FUSE client numbers its own inodes: the same file has another number on each replica."""
    old(sessions_dir, "done", status="completed")
    st = os.stat(sessions_dir / "done.json")
    assert fileversion.version(st) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    assert sessionfile.read(sessions_dir, "done", 10**6).version == fileversion.version(st)


def test_a_folder_of_its_own_leaves_the_sessions_folder_untouched(sessions_dir: Path, tmp_path: Path) -> None:
    """SESSIONS_WARM_START_DIR: where the sessions folder is mounted read-only (the Kubernetes
    manifests), the file lives on a writable mount of its own."""
    for n in range(3):
        old(sessions_dir, f"done-{n}", status="completed")
    before = sorted(os.listdir(sessions_dir))
    own = tmp_path / "warm-start"
    _, reconciler = warmed(sessions_dir, SESSIONS_WARM_START_DIR=str(own))
    assert written(reconciler) == {"written": 1}
    assert sorted(os.listdir(sessions_dir)) == before
    assert set(warmstart.read(own, LIMITS).records) == {"done-0", "done-1", "done-2"}
    _, again = warmed(sessions_dir, SESSIONS_WARM_START_DIR=str(own))
    assert again.stats.warm_start_sessions == 3


def test_a_stop_as_the_warm_up_ends_stops_cleanly(sessions_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM after the last stop check of the warm-up: the writer was decided on, never
    started, and stopping neither raises nor writes. (The moment is caught by wrapping
    `finish_warm_up`: it cannot be hit on purpose otherwise.)"""
    old(sessions_dir, "done", status="completed")
    settings = load_settings({"SESSIONS_DIR": str(sessions_dir), "SESSIONS_WATCH": "poll"})
    store = SessionStore(sessions_dir, cache_max_entries=1000, cache_max_bytes=10**8, max_file_bytes=10**6)
    reconciler = Reconciler(store, settings, watch=NETWORK)
    real_finish = store.finish_warm_up

    def finish_then_stop() -> None:
        real_finish()
        reconciler.stop_event.set()

    monkeypatch.setattr(store, "finish_warm_up", finish_then_stop)
    reconciler.start()
    reconciler._thread.join(30)
    assert not reconciler._thread.is_alive() and not reconciler.ready.is_set()
    reconciler.stop()
    assert reconciler._warm_start_writer is not None and reconciler._warm_start_writer.ident is None
    assert not warmstart.path(sessions_dir / warmstart.FOLDER).exists()


def test_a_recheck_due_while_a_scan_runs_is_not_lost(sessions_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first recheck's scan outlives the second's moment (a big folder, a slow server: made
    here by holding the first scan at a gate, which is mocked): another scan follows it, and sees
    what the client's cache hid at the start."""
    for n in range(5):
        old(sessions_dir, f"done-{n}", status="completed")
    written(warmed(sessions_dir)[1])
    hidden_by_a_client_cache(sessions_dir, "done-1", monkeypatch)
    monkeypatch.setattr(reconciler_module, "WARM_START_RECHECKS_S", (0.2, 0.5))
    store, reconciler = running_without_rescans(sessions_dir)
    gate, scans = threading.Event(), []
    real_scan = reconciler._scan_with_key

    def held_scan() -> Any:
        scans.append(time.monotonic())
        if len(scans) == 1:
            gate.wait(30)
        return real_scan()

    monkeypatch.setattr(reconciler, "_scan_with_key", held_scan)
    reconciler.start()
    try:
        assert reconciler.ready.wait(30)
        wait_until(lambda: len(scans) == 1, 30, what="the first recheck's scan")
        changed = encode(session_doc("done-1", status="completed", result="changed after the first scan began"))
        write_in_place(sessions_dir / "done-1.json", changed)
        # The second recheck comes due while the first scan is held: a scan is owed after it.
        wait_until(lambda: reconciler._rescan_again, 30, what="the second recheck, during the first scan")
        assert len(scans) == 1
        gate.set()
        wait_until(lambda: served(store, "done-1") == changed, 30, what="the change, at the scan after the held one")
        assert len(scans) == 2
    finally:
        gate.set()
        reconciler.stop()


def test_a_forged_record_of_a_racy_or_too_large_file_is_not_taken(sessions_dir: Path) -> None:
    """The checks on the file's side: a version modified this very second is too new to trust,
    and one larger than SESSIONS_MAX_FILE_BYTES is not a session, whatever the record says."""
    put_session(sessions_dir, "new", status="completed")  # written now: racy
    big = old(sessions_dir, "big", status="completed", padding="x" * 2000)
    forged = encode(session_doc("new", status="completed", forged=True))
    warmstart.write(
        sessions_dir / warmstart.FOLDER,
        [
            ("new", fileversion.version(os.stat(sessions_dir / "new.json")), forged),
            ("big", fileversion.version(os.stat(sessions_dir / "big.json")), big),
        ],
        2,
    )
    store, reconciler = warmed(sessions_dir, SESSIONS_MAX_FILE_BYTES=str(len(big) - 1))
    assert reconciler.stats.warm_start_sessions == 0
    assert served(store, "new") == (sessions_dir / "new.json").read_bytes() != forged
    assert store.is_invalid("big")
