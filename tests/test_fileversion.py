"""The one owner of "the same file version" and of a file fault's verdict and reason, on real
files and links; and the reader (app.store.sessionfile) and a stat (the reconciler's) agreeing on both."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from app.errors import InvalidSessionFile, TransientReadError
from app.store import fileversion, sessionfile
from tests.support import encode, session_doc, write_atomic, write_in_place


def sig(path: Path) -> int:
    st = fileversion.stat_following_links(str(path))
    assert st is not None
    return fileversion.signature(st)


def test_a_version_keeps_its_signature_until_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_bytes(b"{}")
    first = sig(path)
    assert sig(path) == first  # looked at again: the same version
    write_in_place(path, b'{"n": 1}')
    rewritten = sig(path)
    assert rewritten != first
    write_atomic(path, b'{"n": 1}')  # the same bytes, but another file (inode)
    assert sig(path) != rewritten
    replaced = sig(path)
    os.utime(path, ns=(1, 1))  # touched: its times change
    assert sig(path) != replaced


def test_a_link_is_known_by_its_target_unless_it_leads_nowhere(tmp_path: Path) -> None:
    target = tmp_path / "target.json"
    target.write_bytes(b"{}")
    (tmp_path / "link.json").symlink_to(target)
    assert sig(tmp_path / "link.json") == sig(target)
    (tmp_path / "dangling.json").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop.json").symlink_to("loop.json")
    for name in ("dangling.json", "loop.json"):
        own = os.lstat(tmp_path / name)
        assert fileversion.stat_following_links(str(tmp_path / name)) == own
    assert fileversion.stat_following_links(str(tmp_path / "gone.json")) is None


def test_racy_means_modified_within_the_window(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_bytes(b"{}")
    st = os.stat(path)
    assert fileversion.is_racy(st)
    assert not fileversion.is_racy(st, st.st_mtime_ns + fileversion.RACY_WINDOW_NS)
    assert fileversion.is_racy(st, st.st_mtime_ns + fileversion.RACY_WINDOW_NS - 1)


# errno -> the verdict: the same set for a read and a stat (they differed before)
FAULTS = [
    (errno.EMFILE, TransientReadError, None),
    (errno.ENFILE, TransientReadError, None),
    (errno.ENOMEM, TransientReadError, None),
    (errno.EINTR, TransientReadError, None),
    (errno.EAGAIN, TransientReadError, None),
    (errno.ELOOP, InvalidSessionFile, fileversion.LINK_LOOP),
    (errno.EACCES, InvalidSessionFile, "unreadable: Permission denied"),
    (errno.EIO, InvalidSessionFile, "unreadable: Input/output error"),
    (errno.ENOENT, FileNotFoundError, None),
]


@pytest.mark.parametrize(("number", "kind", "reason"), FAULTS, ids=[errno.errorcode[f[0]] for f in FAULTS])
def test_the_verdict_on_a_fault(number: int, kind: type[Exception], reason: str | None) -> None:
    # OSError(errno, strerror) builds the subclass the system would raise (ENOENT: FileNotFoundError)
    error = OSError(number, os.strerror(number), "/sessions/a.json")
    verdict = fileversion.fault(error)
    assert isinstance(verdict, kind), verdict
    if reason is not None:
        assert isinstance(verdict, InvalidSessionFile) and verdict.reason == reason
    if kind is TransientReadError:
        assert f"(errno {number})" in str(verdict)
    if kind is FileNotFoundError:
        assert verdict is error


def test_a_stat_says_what_a_read_says(tmp_path: Path) -> None:
    """For every kind of name, the stat the reconciler makes and the read agree: gone, or
    invalid with the same reason."""
    folder = tmp_path / "sessions"
    folder.mkdir()
    (folder / "dangling.json").symlink_to(folder / "nowhere")
    (folder / "loop.json").symlink_to("loop.json")
    (folder / "pingpong.json").symlink_to("pong.link")
    (folder / "pong.link").symlink_to("pingpong.json")
    for job_id in ("dangling", "loop", "pingpong"):
        with pytest.raises(InvalidSessionFile) as by_stat:
            fileversion.stat(str(folder / f"{job_id}.json"))
        with pytest.raises(InvalidSessionFile) as by_read:
            sessionfile.read(folder, job_id, 10_000)
        assert by_stat.value.reason == by_read.value.reason, job_id
    with pytest.raises(FileNotFoundError):
        fileversion.stat(str(folder / "gone.json"))
    with pytest.raises(FileNotFoundError):
        sessionfile.read(folder, "gone", 10_000)


def test_the_reasons_the_reader_gives_come_from_the_owner(tmp_path: Path) -> None:
    (tmp_path / "outside.json").write_bytes(encode(session_doc("outside")))
    folder = tmp_path / "sessions"
    folder.mkdir()
    (folder / "outside.json").symlink_to(tmp_path / "outside.json")
    (folder / "dangling.json").symlink_to(folder / "nowhere")
    (folder / "loop.json").symlink_to("loop.json")
    os.mkfifo(folder / "fifo.json")
    (folder / "big.json").write_bytes(encode(session_doc("big", blob="x" * 200)))
    expected = {
        "outside": fileversion.LINK_OUTSIDE,
        "dangling": fileversion.LINK_TO_NOTHING,
        "loop": fileversion.LINK_LOOP,
        "fifo": fileversion.NOT_A_FILE,
        "big": fileversion.too_large(100, (folder / "big.json").stat().st_size),
    }
    for job_id, reason in expected.items():
        with pytest.raises(InvalidSessionFile) as raised:
            sessionfile.read(folder, job_id, 100)
        assert raised.value.reason == reason, job_id
    assert "larger than SESSIONS_MAX_FILE_BYTES" in fileversion.too_large(100)
