"""One session file: its name, and reading it into a ready-to-serve document and a summary.

Everything a request needs is computed here, once per file version (WhiteNoise's habit): the
body bytes, the strong ETag, the response headers, and the summary bytes a list page joins.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import sys
import time
from pathlib import Path
from typing import NamedTuple, NoReturn

import orjson

from app.errors import InvalidSessionFile
from app.store import fileversion
from app.store.fileversion import signature
from app.store.timestamps import instant_ns

JOB_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_JOB_ID = re.compile(JOB_ID_PATTERN)
SUFFIX = ".json"
_BOM = b"\xef\xbb\xbf"


def is_job_id(value: str) -> bool:
    return _JOB_ID.fullmatch(value) is not None


def job_id_for(name: str) -> str | None:
    """The job id a directory entry names, or None for anything that is not a session file
    (hidden files, temporary files, editor backups...)."""
    if not name.endswith(SUFFIX):
        return None
    stem = name[: -len(SUFFIX)]
    return stem if _JOB_ID.fullmatch(stem) else None


_STALE_HEADER = (b"x-session-stale", b"true")


# NamedTuples, not frozen dataclasses: built once per file read (100,000 times in a warm-up),
# and a frozen dataclass's __init__ costs several times a tuple's.
class Document(NamedTuple):
    """A complete, valid version of a session, ready to send."""

    job_id: str
    body: bytes
    etag: bytes
    headers: list[tuple[bytes, bytes]]  # for a 200
    not_modified_headers: list[tuple[bytes, bytes]]  # for a 304

    @property
    def size(self) -> int:
        return len(self.body)

    def stale_headers(self) -> list[tuple[bytes, bytes]]:
        return [*self.headers, _STALE_HEADER]  # rare: built when needed, not kept

    def stale_not_modified_headers(self) -> list[tuple[bytes, bytes]]:
        return [*self.not_modified_headers, _STALE_HEADER]


class Summary(NamedTuple):
    """What lists and filters need of one version of a session."""

    key: tuple[int, str, bytes]  # (-updated instant in ns, job id, the list item as JSON): see app.store.index
    status: str | None  # the status when it is a string (else None): what filters match
    user_id: str | None  # likewise

    @property
    def json(self) -> bytes:
        return self.key[2]


class LoadedFile(NamedTuple):
    document: Document
    summary: Summary
    signature: int
    racy: bool
    version: fileversion.Version  # of the file the bytes were read from


def _interned(value: object) -> str | None:
    # Statuses and user ids repeat across thousands of sessions: share one string object.
    return sys.intern(value) if isinstance(value, str) else None


def build(job_id: str, data: bytes, mtime_ns: int) -> tuple[Document, Summary]:
    """Validate a file's bytes and prepare everything serving it needs."""
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidSessionFile(_why_not_json(data, exc)) from exc
    if type(parsed) is not dict:
        raise InvalidSessionFile(f"not a JSON object (a {type(parsed).__name__})")
    declared = parsed.get("job_id", job_id)
    if declared != job_id:
        raise InvalidSessionFile(f"job_id {declared!r} does not match the file name {job_id!r}")

    # A strong validator: a digest of the bytes served, the same on every replica.
    etag = b'"' + hashlib.sha256(data).hexdigest()[:32].encode() + b'"'
    not_modified = [(b"etag", etag), (b"cache-control", b"no-cache")]
    document = Document(
        job_id,
        data,
        etag,
        [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data)), *not_modified],
        not_modified,
    )
    status = parsed.get("status")
    user_id = parsed.get("user_id")
    updated_at = parsed.get("updated_at")
    updated = instant_ns(updated_at)
    summary = Summary(
        (
            -(updated if updated is not None else mtime_ns),
            job_id,
            _compact(
                orjson.dumps(
                    {
                        "job_id": job_id,
                        "status": status,
                        "user_id": user_id,
                        "created_at": parsed.get("created_at"),
                        "updated_at": updated_at,
                    }
                )
            ),
        ),
        _interned(status),
        _interned(user_id),
    )
    return document, summary


def _compact(encoded: bytes) -> bytes:
    """A copy that owns exactly its bytes: orjson's result keeps the 4 KiB buffer it was written
    into, which, kept for every session, is 20 times the summary itself."""
    return memoryview(encoded).tobytes()


def _why_not_json(data: bytes, exc: orjson.JSONDecodeError) -> str:
    if not data.strip():
        return "empty file (being written?)"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"not UTF-8: {error.reason} at byte {error.start}"
    return f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"


def _open(root: Path, name: str) -> int:
    path = f"{root}/{name}"
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO must not hang us
    try:
        return os.open(path, flags | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
    # The name is a symbolic link: follow it only if it stays inside the folder.
    target = os.path.realpath(path)
    if os.path.commonpath([target, str(root)]) != str(root):
        raise InvalidSessionFile(fileversion.LINK_OUTSIDE)
    try:
        return os.open(target, flags)
    except FileNotFoundError as exc:
        raise InvalidSessionFile(fileversion.LINK_TO_NOTHING) from exc


def read(root: Path, job_id: str, max_bytes: int, *, forced: bool = False) -> LoadedFile:
    """Read and validate `<root>/<job_id>.json`.

    `forced` (on a network filesystem): the open file's size and times are asked of the file
    server, past the client's attribute cache, so that a file that grew is read whole.
    Raises FileNotFoundError when it does not exist, InvalidSessionFile when it must not be
    served, TransientReadError when the system (not the file) failed us.
    """
    read_at = time.time_ns()
    try:
        fd = _open(root, job_id + SUFFIX)
    except FileNotFoundError:
        raise
    except OSError as exc:
        _raise_for(exc)
    try:
        st = fileversion.forced_fstat(fd) if forced else os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidSessionFile(fileversion.NOT_A_FILE)
        if st.st_size > max_bytes:
            raise InvalidSessionFile(fileversion.too_large(max_bytes, st.st_size))
        data = _read_all(fd, st.st_size, max_bytes)
    except OSError as exc:
        _raise_for(exc)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise InvalidSessionFile(fileversion.too_large(max_bytes))
    document, summary = build(job_id, data, st.st_mtime_ns)
    return LoadedFile(document, summary, signature(st), fileversion.is_racy(st, read_at), fileversion.version(st))


def _read_all(fd: int, size: int, max_bytes: int) -> bytes:
    """The file's bytes, at most max_bytes + 1 (enough to tell it is too large). One read in the
    common case: a short read of a regular file means the end was reached."""
    want = min(size, max_bytes) + 1
    chunk = os.read(fd, want)
    if len(chunk) < want:
        return chunk
    chunks, total = [chunk], len(chunk)  # the file grew while we read it
    while total <= max_bytes:
        chunk = os.read(fd, max_bytes + 1 - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _raise_for(exc: OSError) -> NoReturn:
    verdict = fileversion.fault(exc)
    if verdict is exc:
        raise exc
    raise verdict from exc
