"""`python -m app check [DIR]`: each invalid file printed with its reason; exit status 0 when all
are valid, 1 when any is invalid, 2 when the folder cannot be read."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import REPO, encode, put_session, session_doc
from tests.support.ops import run_check


def test_a_good_folder_exits_0(sessions_dir: Path) -> None:
    put_session(sessions_dir, "a")
    put_session(sessions_dir, "0d227c42-769f-44c8-ad83-e026c97cf544", status="completed")
    (sessions_dir / "plain.json").write_bytes(b'{"anything": [1, 2, 3]}')  # no known field: still valid
    # names that are not session files are ignored, whatever they hold
    (sessions_dir / ".hidden.json").write_bytes(b"garbage")
    (sessions_dir / "a.json.tmp").write_bytes(b"garbage")
    (sessions_dir / "a.json~").write_bytes(b"garbage")
    (sessions_dir / "notes.txt").write_text("garbage")
    (sessions_dir / "sub.json").mkdir()
    result = run_check(sessions_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    assert "3 valid, 0 invalid" in result.stderr


def test_an_empty_folder_exits_0(sessions_dir: Path) -> None:
    result = run_check(sessions_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_the_demo_folder_is_valid() -> None:
    result = run_check(REPO / "data" / "sessions")
    assert result.returncode == 0, result.stdout + result.stderr


def _link_outside(folder: Path, name: str) -> object:
    outside = folder.parent / "outside.json"
    outside.write_bytes(encode(session_doc(name.removesuffix(".json"))))
    os.symlink(outside, folder / name)
    return None


# (file name, how to make it, the start of the reason printed)
BAD_FILES: list[tuple[str, Callable[[Path, str], object], str]] = [
    ("broken.json", lambda d, n: (d / n).write_bytes(b'{"a": '), "not JSON"),
    ("array.json", lambda d, n: (d / n).write_bytes(b"[1, 2]"), "not a JSON object"),
    ("string.json", lambda d, n: (d / n).write_bytes(b'"text"'), "not a JSON object"),
    ("empty.json", lambda d, n: (d / n).write_bytes(b""), "empty file"),
    ("latin1.json", lambda d, n: (d / n).write_bytes('{"user_id": "Jos\xe9"}'.encode("latin-1")), "not UTF-8"),
    ("liar.json", lambda d, n: (d / n).write_bytes(encode(session_doc("someone-else"))), "job_id 'someone-else'"),
    ("huge.json", lambda d, n: (d / n).write_bytes(encode(session_doc("huge", blob="x" * 5000))), "larger than"),
    ("escape.json", _link_outside, "a link that leads outside"),
    ("dangling.json", lambda d, n: os.symlink(d / "nowhere", d / n), "a link to a file that does not exist"),
    ("loop.json", lambda d, n: os.symlink(d / n, d / n), "unreadable: a symbolic link loop"),
]


@pytest.mark.parametrize(("name", "make", "reason"), BAD_FILES, ids=[name for name, _, _ in BAD_FILES])
def test_a_bad_file_is_listed_with_its_reason(
    sessions_dir: Path, name: str, make: Callable[[Path, str], object], reason: str
) -> None:
    put_session(sessions_dir, "good")
    make(sessions_dir, name)
    result = run_check(sessions_dir, env={"SESSIONS_MAX_FILE_BYTES": "4096"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines() == [result.stdout.splitlines()[0]]  # one line: this file
    assert result.stdout.startswith(f"{name}: {reason}"), result.stdout
    assert "1 valid, 1 invalid" in result.stderr


def test_every_bad_file_of_a_folder_is_listed_once(sessions_dir: Path) -> None:
    put_session(sessions_dir, "good-1")
    put_session(sessions_dir, "good-2")
    for name, make, _ in BAD_FILES:
        make(sessions_dir, name)
    result = run_check(sessions_dir, env={"SESSIONS_MAX_FILE_BYTES": "4096"})
    assert result.returncode == 1, result.stdout + result.stderr
    printed = {line.partition(": ")[0]: line.partition(": ")[2] for line in result.stdout.splitlines()}
    assert len(printed) == len(result.stdout.splitlines())  # each once
    assert printed.keys() == {name for name, _, _ in BAD_FILES}
    for name, _, reason in BAD_FILES:
        assert printed[name].startswith(reason), (name, printed[name])
    assert f"2 valid, {len(BAD_FILES)} invalid" in result.stderr


def test_the_folder_defaults_to_sessions_dir(sessions_dir: Path) -> None:
    (sessions_dir / "bad.json").write_bytes(b"[]")
    result = run_check(None, env={"SESSIONS_DIR": str(sessions_dir)})
    assert result.returncode == 1
    assert result.stdout.startswith("bad.json: not a JSON object")


# (folder relative to tmp_path, what to make there)
UNREADABLE_FOLDERS = [
    ("missing", None),
    ("a-file", "file"),
]


@pytest.mark.parametrize(("name", "kind"), UNREADABLE_FOLDERS)
def test_a_folder_that_cannot_be_read_exits_2(tmp_path: Path, name: str, kind: str | None) -> None:
    folder = tmp_path / name
    if kind == "file":
        folder.write_text("not a folder")
    result = run_check(folder)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "SESSIONS_DIR" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_it_says_how_the_service_would_watch_the_folder(sessions_dir: Path) -> None:
    """A local folder: native events (SESSIONS_WATCH=auto); an operator's setting is reported as
    set. (On a network mount it says poll: tests/test_network_volume.py.)"""
    result = run_check(sessions_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "watch: native (SESSIONS_WATCH=auto: the folder is on " in result.stderr
    forced = run_check(sessions_dir, env={"SESSIONS_WATCH": "poll"})
    assert "watch: poll (SESSIONS_WATCH=poll; the folder is on " in forced.stderr
    assert forced.stdout == ""  # stdout lists invalid files only


def test_it_says_what_a_start_would_take_from_the_warm_start_file(sessions_dir: Path) -> None:
    """Not used on a local disk, off when set so. (On a network mount it reads the file and says
    how many sessions it holds: tests/test_network_volume.py.)"""
    result = run_check(sessions_dir)
    assert re.search(r"^warm start: not used: the folder is on \S+, not a network filesystem$", result.stderr, re.M)
    off = run_check(sessions_dir, env={"SESSIONS_WARM_START": "off"})
    assert "warm start: off (SESSIONS_WARM_START=off): every start reads every file" in off.stderr
