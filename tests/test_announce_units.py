"""Both ends of the announcement journals on a local folder (fast): the callers' library's
`SessionWriter` and commands, and the service's reader (app/announcements.py) fed to a real
`PendingChanges`. The same on a real network mount, with the real server, is in
tests/test_network_writers.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sessions_client import SessionWriter
from sessions_client import writer as writer_module

from app.store import announcements
from app.store.announcements import AnnouncementReader
from app.store.pending import PendingChanges
from tests.support import wait_until

# --- the writer ------------------------------------------------------------------------------------


def journals(folder: Path) -> list[Path]:
    return sorted((folder / ".announce").glob("*.journal"), key=lambda path: path.name)


def journal_lines(folder: Path) -> list[str]:
    lines = []
    for path in journals(folder):
        lines += [line for line in path.read_text().split("\n") if line]
    return lines


def test_save_writes_atomically_and_announces(sessions_dir: Path) -> None:
    writer = SessionWriter(sessions_dir)
    target = writer.save("job-1", {"job_id": "job-1", "status": "running", "note": "é"})
    assert target == sessions_dir / "job-1.json"
    assert json.loads(target.read_text(encoding="utf-8")) == {"job_id": "job-1", "status": "running", "note": "é"}
    writer.save("job-2", b'{"status": "completed"}\n')  # bytes: written as they are
    assert (sessions_dir / "job-2.json").read_bytes() == b'{"status": "completed"}\n'
    # Nothing else in the folder: no temporary file left behind.
    assert sorted(path.name for path in sessions_dir.iterdir()) == [".announce", "job-1.json", "job-2.json"]
    assert journal_lines(sessions_dir) == ["job-1", "job-2"]
    (journal,) = journals(sessions_dir)
    assert journal.read_bytes().startswith(b"\n")  # opened with a blank line, never empty
    writer_id, _, seq = journal.name.removesuffix(".journal").rpartition("-")
    assert seq == "1" and writer_id.count("-") >= 2  # <host>-<pid>-<random>-<seq>
    assert f"-{os.getpid()}-" in writer_id


def test_one_journal_per_process_however_many_writers(sessions_dir: Path) -> None:
    for index in range(5):
        SessionWriter(sessions_dir).save(f"job-{index}", {"status": "running"})
    assert len(journals(sessions_dir)) == 1
    assert journal_lines(sessions_dir) == [f"job-{index}" for index in range(5)]


@pytest.mark.parametrize(
    ("job_id", "document", "error"),
    [
        ("../evil", {}, ValueError),
        (".hidden", {}, ValueError),
        ("a" * 129, {}, ValueError),
        ("job-1", {"job_id": "job-2"}, ValueError),
        ("job-1", ["not", "an", "object"], TypeError),
    ],
)
def test_save_refuses_what_would_not_be_a_session(
    sessions_dir: Path, job_id: str, document: object, error: type
) -> None:
    with pytest.raises(error):
        SessionWriter(sessions_dir).save(job_id, document)  # type: ignore[arg-type]
    assert [path.name for path in sessions_dir.iterdir() if path.name != ".announce"] == []
    assert journal_lines(sessions_dir) == []


def test_a_failed_write_leaves_no_temporary_file(sessions_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = SessionWriter(sessions_dir)

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_module.os, "fsync", fail)
    with pytest.raises(OSError):
        writer.save("job-1", {"status": "running"})
    assert [path.name for path in sessions_dir.iterdir()] == [".announce"]
    assert journal_lines(sessions_dir) == []  # nothing saved, nothing announced


def test_delete_removes_and_announces(sessions_dir: Path) -> None:
    writer = SessionWriter(sessions_dir)
    writer.save("job-1", {"status": "running"})
    assert writer.delete("job-1") is True
    assert not (sessions_dir / "job-1.json").exists()
    assert writer.delete("job-1") is False  # gone already: still announced, harmless
    assert journal_lines(sessions_dir) == ["job-1", "job-1", "job-1"]
    with pytest.raises(ValueError):
        writer.delete("../x")


def test_concurrent_saves_never_tear_a_line(sessions_dir: Path) -> None:
    writer = SessionWriter(sessions_dir)

    def save_many(thread: int) -> None:
        for index in range(100):
            writer.save(f"job-{thread}-{index}", {"status": "running", "index": index})

    threads = [threading.Thread(target=save_many, args=(thread,)) for thread in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = {f"job-{thread}-{index}" for thread in range(6) for index in range(100)}
    lines = journal_lines(sessions_dir)
    assert len(lines) == 600 and set(lines) == expected
    assert {path.stem for path in sessions_dir.glob("*.json")} == expected


def test_rotation_keeps_the_journal_bounded(sessions_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "ROTATE_BYTES", 200)
    writer = SessionWriter(sessions_dir)
    for index in range(100):
        writer.announce(f"job-{index:04d}")  # 9 bytes a line: a journal every ~23 lines
    names = [path.name for path in journals(sessions_dir)]
    seqs = sorted(int(name.removesuffix(".journal").rpartition("-")[2]) for name in names)
    assert len(seqs) == 2 and seqs[1] == seqs[0] + 1 and seqs[1] >= 4  # the newest and the one before
    assert all(path.stat().st_size <= 200 + 10 for path in journals(sessions_dir))
    assert journal_lines(sessions_dir)[-1] == "job-0099"


def test_housekeeping_deletes_abandoned_journals(sessions_dir: Path) -> None:
    folder = sessions_dir / ".announce"
    folder.mkdir()
    abandoned, recent, other = (
        folder / "dead-1-abcdef01-3.journal",
        folder / "live-2-abcdef02-1.journal",
        folder / "x.txt",
    )
    for path in (abandoned, recent, other):
        path.write_text("job-1\n")
    two_hours_ago = time.time() - 7200
    os.utime(abandoned, (two_hours_ago, two_hours_ago))
    os.utime(other, (two_hours_ago, two_hours_ago))
    SessionWriter(sessions_dir)  # a writer's start
    assert not abandoned.exists()
    assert recent.exists() and other.exists()  # a live writer's, and what is not a journal


def test_a_forked_child_writes_a_journal_of_its_own(sessions_dir: Path) -> None:
    writer = SessionWriter(sessions_dir)
    writer.save("parent-1", {"status": "running"})
    pid = os.fork()
    if pid == 0:  # the child: save with the parent's writer object, then leave at once
        try:
            writer.save("child-1", {"status": "running"})
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    writer.save("parent-2", {"status": "running"})
    contents = {path.name: [line for line in path.read_text().split("\n") if line] for path in journals(sessions_dir)}
    assert sorted(contents.values()) == [["child-1"], ["parent-1", "parent-2"]]


def test_commands_save_and_announce(sessions_dir: Path) -> None:
    bin_dir = Path(sys.executable).parent
    save = subprocess.run(
        [bin_dir / "sessions-save", sessions_dir, "job-1"], input=b'{"status": "running"}', capture_output=True
    )
    assert save.returncode == 0, save.stderr
    assert (sessions_dir / "job-1.json").read_bytes() == b'{"status": "running"}'
    announce = subprocess.run([bin_dir / "sessions-announce", sessions_dir, "job-1", "job-2"], capture_output=True)
    assert announce.returncode == 0, announce.stderr
    # Short-lived processes share one journal per host instead of leaving one each.
    (journal,) = journals(sessions_dir)
    assert "-shell-" in journal.name
    assert journal_lines(sessions_dir) == ["job-1", "job-1", "job-2"]
    for argv, stdin in (
        (["sessions-save", sessions_dir, "job-3"], b"not json"),
        (["sessions-save", sessions_dir, "job-3"], b"[1, 2]"),
        (["sessions-save", sessions_dir, "job-3"], b'{"job_id": "job-4"}'),
        (["sessions-save", sessions_dir, "../job"], b"{}"),
        (["sessions-announce", sessions_dir, "bad/id"], b""),
    ):
        result = subprocess.run([bin_dir / str(argv[0]), *argv[1:]], input=stdin, capture_output=True)
        assert result.returncode == 2, (argv, result.stderr)
        assert result.stderr
    assert not (sessions_dir / "job-3.json").exists()


# --- the reader --------------------------------------------------------------------------------------


class Collector:
    """Runs a reader over a folder and gathers what it hands to the reconciler's queue."""

    def __init__(self, root: Path, direct: bool) -> None:
        self.pending = PendingChanges()
        self.stop = threading.Event()
        self.reader = AnnouncementReader(root, self.pending, self.stop, direct=direct)
        self.seen: list[str] = []

    def start(self) -> None:
        self.reader.start()
        assert self.reader.settled.wait(10)

    def collect(self) -> list[str]:
        ids, _ = self.pending.take(0)
        self.seen += sorted(ids)
        return self.seen

    def wait_for(self, *job_ids: str, timeout: float = 10.0) -> None:
        wait_until(lambda: set(job_ids) <= set(self.collect()), timeout, what=f"announcements of {job_ids}")

    def quiet(self, seconds: float = 1.5) -> list[str]:
        """What arrives within `seconds` (for "nothing more arrives")."""
        before = len(self.collect())
        time.sleep(seconds)
        return self.collect()[before:]

    def close(self) -> None:
        self.stop.set()
        self.reader.join(5)
        assert not self.reader._thread.is_alive()


@pytest.fixture(params=[False, True], ids=["buffered", "direct"])
def collector(request: pytest.FixtureRequest, sessions_dir: Path) -> Iterator[Collector]:
    collector = Collector(sessions_dir, direct=request.param)
    yield collector
    collector.close()


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as stream:
        stream.write(data)


def test_reader_follows_new_journals_from_their_start(sessions_dir: Path, collector: Collector) -> None:
    collector.start()  # no .announce folder yet: nothing to read, no error
    writer = SessionWriter(sessions_dir)
    writer.save("job-1", {"status": "running"})
    collector.wait_for("job-1")
    writer.save("job-2", {"status": "running"})
    writer.delete("job-1")
    collector.wait_for("job-2", "job-1")
    assert collector.reader.stats.journals == 1
    assert collector.reader.stats.announcements >= 3
    assert collector.reader.stats.malformed == 0


def test_reader_skips_what_a_journal_held_before_start(sessions_dir: Path, collector: Collector) -> None:
    folder = sessions_dir / ".announce"
    folder.mkdir()
    journal = folder / "w-1-00000000-1.journal"
    journal.write_bytes(b"\nold-1\nold-2\n")
    collector.start()
    append(journal, b"new-1\n")
    collector.wait_for("new-1")
    assert "old-1" not in collector.seen and "old-2" not in collector.seen


def test_reader_holds_a_torn_line_until_it_is_complete(sessions_dir: Path, collector: Collector) -> None:
    collector.start()
    folder = sessions_dir / ".announce"
    folder.mkdir()
    journal = folder / "w-1-00000000-1.journal"
    journal.write_bytes(b"\njob-1\njob-")
    collector.wait_for("job-1")
    assert collector.quiet() == []  # "job-" is not announced, nor counted as malformed
    assert collector.reader.stats.malformed == 0
    append(journal, b"2\n")
    collector.wait_for("job-2")
    assert "job-" not in collector.seen


def test_reader_drops_a_dead_writers_torn_line_with_its_journal(sessions_dir: Path, collector: Collector) -> None:
    collector.start()
    folder = sessions_dir / ".announce"
    folder.mkdir()
    dead = folder / "w-1-00000000-1.journal"
    dead.write_bytes(b"\njob-1\njob-2-torn")
    collector.wait_for("job-1")
    dead.unlink()  # the dead writer's journal is removed (housekeeping, by hand)
    wait_until(lambda: collector.reader.stats.journals == 0, what="the deleted journal forgotten")
    live = folder / "w-2-00000000-1.journal"
    live.write_bytes(b"\njob-3\n")
    collector.wait_for("job-3")
    assert not any(job_id.startswith("job-2") for job_id in collector.seen)


def test_reader_counts_and_skips_garbage(sessions_dir: Path, collector: Collector) -> None:
    collector.start()
    folder = sessions_dir / ".announce"
    folder.mkdir()
    (folder / "w-1-00000000-1.journal").write_bytes(b"\njob-1\n../etc/passwd\n\xff\xfe\nhas space\njob-2\r\n")
    (folder / "ignored.txt").write_bytes(b"job-ignored\n")
    (folder / ".hidden.journal").write_bytes(b"job-hidden\n")
    collector.wait_for("job-1", "job-2")
    assert collector.reader.stats.malformed == 3
    assert collector.quiet() == []
    assert "job-ignored" not in collector.seen and "job-hidden" not in collector.seen
    # A long run of garbage without a newline is skipped, not held for ever.
    append(folder / "w-1-00000000-1.journal", b"x" * 5000)
    wait_until(lambda: collector.reader.stats.malformed == 4, what="the garbage skipped")
    append(folder / "w-1-00000000-1.journal", b"\njob-3\n")
    collector.wait_for("job-3")


def test_reader_starts_over_on_a_truncated_or_replaced_journal(sessions_dir: Path, collector: Collector) -> None:
    collector.start()
    folder = sessions_dir / ".announce"
    folder.mkdir()
    journal = folder / "w-1-00000000-1.journal"
    journal.write_bytes(b"\n" + b"".join(b"job-%d\n" % index for index in range(100)))
    collector.wait_for("job-99")
    journal.write_bytes(b"\nafter-truncation\n")  # shorter than what was read
    collector.wait_for("after-truncation")
    replacement = folder / ".tmp"
    replacement.write_bytes(b"\nafter-replacement-with-a-longer-line-than-before\n" + b"x\n" * 20)
    os.replace(replacement, journal)
    collector.wait_for("after-replacement-with-a-longer-line-than-before")


def test_reader_follows_a_rotation_while_reading(
    sessions_dir: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "ROTATE_BYTES", 300)
    monkeypatch.setattr(announcements, "ROTATE_BYTES", 300)
    collector.start()
    writer = SessionWriter(sessions_dir)
    writer.announce("job-first")
    collector.wait_for("job-first")  # the reader follows the writer's journal
    expected = set()
    for index in range(200):  # ~8 rotations, the reader reading meanwhile
        writer.announce(f"job-{index:04d}")
        expected.add(f"job-{index:04d}")
        if index % 20 == 0:
            time.sleep(0.15)
    # Lines in a journal deleted before the reader got to them may be lost: a hint, no more.
    # What a reader must not do is stop following the writer.
    writer.announce("job-last")
    collector.wait_for("job-last")
    assert len(expected & set(collector.seen)) >= 150
    # Deleted journals are forgotten at the next listing: the newest and the one kept remain.
    wait_until(lambda: collector.reader.stats.journals == 2, what="rotated-away journals forgotten")


def test_reader_survives_the_folder_deleted_and_recreated(sessions_dir: Path, collector: Collector) -> None:
    collector.start()
    writer = SessionWriter(sessions_dir)
    writer.announce("job-1")
    collector.wait_for("job-1")
    for path in journals(sessions_dir):
        path.unlink()
    (sessions_dir / ".announce").rmdir()
    wait_until(lambda: collector.reader.stats.journals == 0, what="the journals forgotten")
    writer.announce("job-2")  # the writer's journal is gone: it starts its next one
    SessionWriter(sessions_dir).announce("job-3")
    collector.wait_for("job-2", "job-3")
    assert (sessions_dir / ".announce").is_dir()


def test_reader_stops_promptly(sessions_dir: Path) -> None:
    collector = Collector(sessions_dir, direct=False)
    collector.start()
    started = time.monotonic()
    collector.close()
    assert time.monotonic() - started < 2.0
