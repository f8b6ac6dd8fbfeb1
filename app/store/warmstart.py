"""The warm-start file: what one replica read at start-up, left in the shared folder for the next.

On a network volume a warm-up that reads every file costs round trips and the file server's CPU
per file (on the sshfs stand-in of the benchmarks, 100,000 files take about ten times as long as
on a local disk). A replica that has read them all writes, once, what it read into
`.warmstart/sessions` in the sessions folder (or in SESSIONS_WARM_START_DIR): each session's
bytes and the version of its file they came from (size, modification and change times). The
next replica to start reads that one file, lists and stats the folder, takes from it each
session whose file has the same version now, and reads the rest from the folder
(docs/network-volumes.md, "Warm start").

The file is a cache, never the truth: one whose version differs is read again, only versions
old enough that no later write can share their times are written (the racy rule of
`app.store.fileversion`), and a file that cannot be read whole and checked is ignored (the
warm-up then reads every file, as it would without it). The format (all integers little-endian):

    MAGIC, then HEADER (written at, in ns since the epoch; number of records), then one zlib
    stream of records: RECORD (job id length, body length, size, mtime ns, ctime ns), the job
    id (ASCII), the body (the document's bytes).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from app.store import fileversion
from app.store.fileversion import Version
from app.store.sessionfile import is_job_id

FOLDER = ".warmstart"
NAME = "sessions"
TEMPORARY_SUFFIX = ".tmp"
_TEMPORARY = re.compile(rf"{NAME}\.[0-9]+\.[0-9a-f]{{8}}{re.escape(TEMPORARY_SUFFIX)}")
MAGIC = b"job-sessions warm-start 1\n"
HEADER = struct.Struct("<qQ")
RECORD = struct.Struct("<HIqqq")
MAX_RECORDS = 100_000_000  # a header claiming more is not one of ours
COMPRESSION_LEVEL = 1  # sessions' JSON shrinks about 5x at level 1, in a second per 200 MB
READ_CHUNK = 1 << 20
DECOMPRESSED_CHUNK = 8 << 20
# A temporary file this old was left by a writer that died: the next writer removes it.
ABANDONED_AFTER_S = 3600.0


class WarmStartError(ValueError):
    """The file is not a complete warm-start file of this format: it must not be used."""


class Record(NamedTuple):
    version: Version
    body: bytes


class Contents(NamedTuple):
    version: Version  # of the warm-start file itself: another replica's write changes it
    records: dict[str, Record]


def path(folder: Path) -> Path:
    """The warm-start file in `folder` (SESSIONS_WARM_START_DIR, `.warmstart` in the sessions
    folder by default)."""
    return folder / NAME


class Limits(NamedTuple):
    """What a reader holds at most: the file's records become the cache's documents, so the
    cache's bounds bound them (a replica writes only what its cache holds)."""

    body_bytes: int  # SESSIONS_MAX_FILE_BYTES
    records: int  # SESSIONS_CACHE_MAX_ENTRIES
    total_bytes: int  # SESSIONS_CACHE_MAX_BYTES


def read(folder: Path, limits: Limits) -> Contents:
    """The warm-start file's records. Raises FileNotFoundError when there is none, OSError when
    it cannot be read, WarmStartError when it is not whole, not of this format, or holds more
    than `limits` allow."""
    with _open_file(folder) as (file, version):
        count = _header(file, limits)
        records = dict(_records(_decompressed(file), count, limits))
    if len(records) != count:
        raise WarmStartError(f"{len(records)} distinct records, the header says {count}")
    return Contents(version, records)


def summary(folder: Path, limits: Limits) -> tuple[Version, int]:
    """The file's version and how many records it holds, checked as `read` checks it, without
    holding its documents (for `python -m app check`, which may run beside the service)."""
    with _open_file(folder) as (file, version):
        count = _header(file, limits)
        held = sum(1 for _ in _records(_decompressed(file), count, limits))
    return version, held


def _header(file: BinaryIO, limits: Limits) -> int:
    """The number of records the header announces."""
    head = _read_exactly(file, len(MAGIC) + HEADER.size)
    if head[: len(MAGIC)] != MAGIC:
        raise WarmStartError("not a warm-start file of this version")
    count: int = HEADER.unpack_from(head, len(MAGIC))[1]
    if count > min(MAX_RECORDS, limits.records):
        raise WarmStartError(f"{count} records, more than the cache holds ({limits.records})")
    return count


@contextlib.contextmanager
def _open_file(folder: Path) -> Iterator[tuple[BinaryIO, Version]]:
    """The warm-start file, open for reading, and its version. Neither its folder nor the file
    may be a link, and the file must be a regular one: a FIFO put there would otherwise block
    the warm-up for ever (hence O_NONBLOCK, which a regular file ignores)."""
    folder_fd = _open_folder(folder)
    try:
        fd = os.open(NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder_fd)
    finally:
        os.close(folder_fd)
    with open(fd, "rb", buffering=0) as file:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise WarmStartError("not a regular file")
        yield file, fileversion.version(st)


def _read_exactly(file: BinaryIO, size: int) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise WarmStartError("truncated")
    return data


def _decompressed(file: BinaryIO) -> Iterator[bytes]:
    """The zlib stream's bytes, at most DECOMPRESSED_CHUNK at a time (a few compressed bytes
    can stand for gigabytes); raises WarmStartError unless the stream ends exactly at the end
    of the file (zlib checks the stream's own checksum at its end)."""
    stream = zlib.decompressobj()
    while not stream.eof:
        pending = file.read(READ_CHUNK)
        if not pending:
            raise WarmStartError("truncated")
        while pending and not stream.eof:
            try:
                yield stream.decompress(pending, DECOMPRESSED_CHUNK)
            except zlib.error as exc:
                raise WarmStartError(f"corrupt: {exc}") from exc
            pending = stream.unconsumed_tail
    if stream.unused_data or file.read(1):
        raise WarmStartError("bytes after the end of the records")


def _records(chunks: Iterator[bytes], count: int, limits: Limits) -> Iterator[tuple[str, Record]]:
    buffer = bytearray()
    offset = 0
    total = 0
    for _ in range(count):
        while len(buffer) - offset < RECORD.size:
            offset = _refill(buffer, offset, chunks)
        id_length, body_length, size, mtime_ns, ctime_ns = RECORD.unpack_from(buffer, offset)
        if body_length > limits.body_bytes or size > limits.body_bytes + 3:  # + 3: a byte order mark
            raise WarmStartError("a record larger than SESSIONS_MAX_FILE_BYTES")
        total += body_length
        if total > limits.total_bytes:
            raise WarmStartError(f"more bytes of documents than the cache holds ({limits.total_bytes})")
        end = offset + RECORD.size + id_length + body_length
        while len(buffer) < end:
            offset = _refill(buffer, offset, chunks)
            end = offset + RECORD.size + id_length + body_length
        start = offset + RECORD.size
        job_id = buffer[start : start + id_length].decode("ascii", errors="replace")
        if not is_job_id(job_id):
            raise WarmStartError("a record whose job id is not one")
        body = memoryview(buffer)[start + id_length : end].tobytes()  # one copy, exactly its bytes
        yield job_id, Record(Version(size, mtime_ns, ctime_ns), body)
        offset = end
    if offset != len(buffer) or any(chunks):
        raise WarmStartError("more bytes than records")


def _refill(buffer: bytearray, offset: int, chunks: Iterator[bytes]) -> int:
    """Drop what was parsed and append the next chunk; the new offset (0)."""
    del buffer[:offset]
    chunk = next(chunks, None)
    if chunk is None:
        raise WarmStartError("fewer records than the header says")
    buffer += chunk
    return 0


def _open_folder(folder: Path) -> int:
    return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def write(warm_start_folder: Path, records: Iterable[tuple[str, Version, bytes]], count: int) -> int:
    """Write `count` records atomically (a temporary file in the folder, fsync, rename) and
    return the file's size. The folder is created if its parent exists. Raises OSError when it
    is read-only, full or gone, or is not a folder of its own (a link is never followed: the
    service writes nowhere else)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(warm_start_folder)
    folder = _open_folder(warm_start_folder)
    try:
        _remove_abandoned(folder)
        temporary = f"{NAME}.{os.getpid()}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"  # _TEMPORARY
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, 0o644, dir_fd=folder)
        try:
            with open(fd, "wb") as file:
                _write_records(file, records, count)
                file.flush()
                os.fsync(fd)
                size = file.tell()
            os.replace(temporary, NAME, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=folder)
            raise
    finally:
        os.close(folder)
    return size


def _write_records(file: BinaryIO, records: Iterable[tuple[str, Version, bytes]], count: int) -> None:
    file.write(MAGIC + HEADER.pack(time.time_ns(), count))
    stream = zlib.compressobj(COMPRESSION_LEVEL)
    pending: list[bytes] = []
    pending_bytes = written = 0
    for job_id, version, body in records:
        written += 1
        name = job_id.encode("ascii")
        pending += (RECORD.pack(len(name), len(body), *version), name, body)
        pending_bytes += len(body)
        if pending_bytes >= READ_CHUNK:
            file.write(stream.compress(b"".join(pending)))
            pending, pending_bytes = [], 0
    file.write(stream.compress(b"".join(pending)) + stream.flush())
    if written != count:
        raise ValueError(f"{written} records given, {count} announced")


def current_version(folder: Path) -> Version | None:
    """The version of the warm-start file there now, None if there is none: compared with the
    one read at start-up, it tells whether another replica wrote one since (on the file
    server's clock alone)."""
    try:
        st = os.stat(path(folder), follow_symlinks=False)
    except OSError:
        return None
    return fileversion.version(st)


def _remove_abandoned(folder: int) -> None:
    """Remove the temporary files of writers that died (ours only: the folder may be shared)."""
    cutoff = time.time() - ABANDONED_AFTER_S
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if _TEMPORARY.fullmatch(name):
            try:
                if os.stat(name, dir_fd=folder, follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(name, dir_fd=folder)
            except OSError:
                pass  # another writer's, removed meanwhile
