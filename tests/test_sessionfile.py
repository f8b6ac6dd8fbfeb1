from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from app.errors import InvalidSessionFile
from app.store import sessionfile
from app.store.sessionfile import is_job_id, job_id_for
from app.store.timestamps import instant_ns
from tests.support import encode, session_doc

MAX = 10_000


@pytest.mark.parametrize(
    ("name", "job_id"),
    [
        ("3f1c2a9e-1b2c-4d5e-8f90-123456789abc.json", "3f1c2a9e-1b2c-4d5e-8f90-123456789abc"),
        ("job_1.v2.json", "job_1.v2"),
        ("a.json", "a"),
        ("A" * 128 + ".json", "A" * 128),
        ("A" * 129 + ".json", None),
        (".hidden.json", None),
        ("job.json.tmp", None),
        ("job.json~", None),
        ("#job.json#", None),
        ("job.json.swp", None),
        ("-job.json", None),
        ("job.JSON", None),
        (".json", None),
        ("jöb.json", None),
        ("job id.json", None),
        ("job.txt", None),
    ],
)
def test_which_names_are_sessions(name: str, job_id: str | None) -> None:
    assert job_id_for(name) == job_id


@pytest.mark.parametrize("value", ["", ".", "..", "a/b", "a\\b", "a\x00b", "a" * 129, "é", " a", "a b", "-a", "_a"])
def test_invalid_job_ids(value: str) -> None:
    assert not is_job_id(value)


def test_reads_a_valid_file(tmp_path: Path) -> None:
    doc = session_doc("job-1", status="pending_hitl", hitl={"question": "Approve?"})
    data = encode(doc)
    (tmp_path / "job-1.json").write_bytes(data)
    loaded = sessionfile.read(tmp_path, "job-1", MAX)
    document, summary = loaded.document, loaded.summary
    assert document.body == data  # served exactly as written
    assert document.etag.startswith(b'"') and document.etag.endswith(b'"')
    headers = dict(document.headers)
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(data)).encode()
    assert headers[b"cache-control"] == b"no-cache"
    assert b"x-session-stale" not in headers
    assert dict(document.stale_headers())[b"x-session-stale"] == b"true"
    assert orjson.loads(summary.json) == {
        "job_id": "job-1",
        "status": "pending_hitl",
        "user_id": "user-1",
        "created_at": "2024-05-01T11:00:00Z",
        "updated_at": "2024-05-01T12:00:00Z",
    }
    assert summary.key[:2] == (-instant_ns("2024-05-01T12:00:00Z"), "job-1")  # type: ignore[operator]


def test_summary_keeps_values_as_written_and_nulls(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_bytes(b'{"status": 7, "updated_at": "yesterday"}')
    loaded = sessionfile.read(tmp_path, "x", MAX)
    assert orjson.loads(loaded.summary.json) == {
        "job_id": "x",
        "status": 7,
        "user_id": None,
        "created_at": None,
        "updated_at": "yesterday",
    }
    assert loaded.summary.status is None  # not a string: matches no status filter
    # no parsable updated_at: the file's modification time orders it
    assert loaded.summary.key[:2] == (-os.stat(tmp_path / "x.json").st_mtime_ns, "x")


def test_same_bytes_same_etag_different_bytes_different_etag(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_bytes(b'{"v": 1}')
    (tmp_path / "b.json").write_bytes(b'{"v": 1}')
    first = sessionfile.read(tmp_path, "a", MAX).document.etag
    assert sessionfile.read(tmp_path, "b", MAX).document.etag == first
    (tmp_path / "a.json").write_bytes(b'{"v": 2}')
    assert sessionfile.read(tmp_path, "a", MAX).document.etag != first


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b'{"job_id": "j", "status": "run', "not JSON"),
        (b"not json at all", "not JSON"),
        (b'{"a": "\xff\xfe"}', "not UTF-8"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b'"a string"', "not a JSON object"),
        (b"null", "not a JSON object"),
        (b'{"job_id": "other"}', "does not match the file name"),
        (b'{"job_id": 5}', "does not match the file name"),
        (b"{" + b'"k": "' + b"x" * MAX + b'"}', "larger than SESSIONS_MAX_FILE_BYTES"),
    ],
)
def test_invalid_files(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / "j.json").write_bytes(content)
    with pytest.raises(InvalidSessionFile) as caught:
        sessionfile.read(tmp_path, "j", MAX)
    assert reason in caught.value.reason


def test_a_utf8_bom_is_tolerated(tmp_path: Path) -> None:
    (tmp_path / "j.json").write_bytes(b'\xef\xbb\xbf{"status": "running"}')
    assert sessionfile.read(tmp_path, "j", MAX).document.body == b'{"status": "running"}'


def test_links(tmp_path: Path) -> None:
    root = tmp_path / "sessions"
    root.mkdir()
    outside = tmp_path / "secret.json"
    outside.write_bytes(b'{"secret": true}')
    (root / "inside-target.json").write_bytes(b'{"status": "running"}')
    (root / "out.json").symlink_to(outside)
    (root / "in.json").symlink_to(root / "inside-target.json")
    (root / "loop.json").symlink_to(root / "loop.json")
    (root / "dangling.json").symlink_to(root / "nothing-here")
    (root / "dotdot.json").symlink_to("../secret.json")

    assert sessionfile.read(root, "in", MAX).document.body == b'{"status": "running"}'
    for job_id, reason in [
        ("out", "outside the sessions folder"),
        ("dotdot", "outside the sessions folder"),
        ("loop", "symbolic link loop"),
        ("dangling", "does not exist"),
    ]:
        with pytest.raises(InvalidSessionFile) as caught:
            sessionfile.read(root, job_id, MAX)
        assert reason in caught.value.reason, job_id


def test_a_fifo_is_not_read_and_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.json")
    with pytest.raises(InvalidSessionFile, match="not a regular file"):
        sessionfile.read(tmp_path, "pipe", MAX)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        sessionfile.read(tmp_path, "gone", MAX)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:01.5Z", 1_500_000_000),
        ("1970-01-01t00:00:00.000000001z", 1),
        ("1970-01-01T02:00:00+02:00", 0),
        ("1969-12-31T19:00:00-05:00", 0),
        ("1970-01-01 00:00:00Z", 0),
        ("2016-12-31T23:59:60Z", 1483228800_000_000_000),
        ("2024-02-30T00:00:00Z", None),
        ("2024-01-01T00:00:00", None),  # no offset: not RFC 3339
        ("2024-01-01", None),
        ("2024-01-01T00:00:00+25:00", None),
        ("\uff12\uff10\uff12\uff14-01-01T00:00:00Z", None),  # full-width digits: not RFC 3339
        ("2024-01-01T00:00:00.\u0661\u0662Z", None),  # Arabic-Indic digits in the fraction
        (1700000000, None),
        (None, None),
    ],
)
def test_rfc3339_instants(value: object, expected: int | None) -> None:
    assert instant_ns(value) == expected
