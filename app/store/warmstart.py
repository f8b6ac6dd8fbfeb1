"""The warm-start file: what one replica read at start-up, left in the shared folder for the next.

On a network volume a warm-up that reads every file costs round trips and the file server's CPU
per file (on the sshfs stand-in of the benchmarks, 100,000 files take about ten times as long as
on a local disk). A replica that has read them all writes, once, what it read into
`.warmstart/sessions` in the folder: each session's bytes and the version of its file they came
from (size, modification and change times). The next replica to start reads that one file, lists
and stats the folder, takes from it each session whose file has the same version now, and reads
the rest from the folder (docs/network-volumes.md, "Warm start").

The file is a cache, never the truth: one whose version differs is read again, only versions
old enough that no later write can share their times are written (the racy rule of
`app.store.fileversion`), and a file that cannot be read whole and checked is ignored (the
warm-up then reads every file, as it would without it). The format (all integers little-endian):

    MAGIC, then HEADER (written at, in ns since the epoch; number of records), then one zlib
    stream of records: RECORD (job id length, body length, size, mtime ns, ctime ns), the job
    id (ASCII), the body (the document's bytes).
"""

from __future__ import annotations

import os
import secrets
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from app.store.fileversion import Version
from app.store.sessionfile import is_job_id

FOLDER = ".warmstart"
NAME = "sessions"
TEMPORARY_SUFFIX = ".tmp"
MAGIC = b"job-sessions warm-start 1\n"
HEADER = struct.Struct("<qQ")
RECORD = struct.Struct("<HIqqq")
MAX_RECORDS = 100_000_000  # a header claiming more is not one of ours
COMPRESSION_LEVEL = 1  # sessions' JSON shrinks about 5x at level 1, in a second per 200 MB
READ_CHUNK = 1 << 20
# A temporary file this old was left by a writer that died: the next writer removes it.
ABANDONED_AFTER_S = 3600.0


class WarmStartError(ValueError):
    """The file is not a complete warm-start file of this format: it must not be used."""


class Record(NamedTuple):
    version: Version
    body: bytes


class Contents(NamedTuple):
    written_at_ns: int
    records: dict[str, Record]


def path(root: Path) -> Path:
    return root / FOLDER / NAME


def read(root: Path, max_body_bytes: int) -> Contents:
    """The warm-start file's records. Raises FileNotFoundError when there is none, OSError when
    it cannot be read, WarmStartError when it is not whole or not of this format."""
    with open(path(root), "rb", buffering=0) as file:
        head = _read_exactly(file, len(MAGIC) + HEADER.size)
        if head[: len(MAGIC)] != MAGIC:
            raise WarmStartError("not a warm-start file of this version")
        written_at_ns, count = HEADER.unpack_from(head, len(MAGIC))
        if count > MAX_RECORDS:
            raise WarmStartError(f"claims {count} records")
        records = dict(_records(_decompressed(file), count, max_body_bytes))
    if len(records) != count:
        raise WarmStartError(f"{len(records)} distinct records, the header says {count}")
    return Contents(written_at_ns, records)


def _read_exactly(file: object, size: int) -> bytes:
    data = file.read(size)  # type: ignore[attr-defined]
    if len(data) != size:
        raise WarmStartError("truncated")
    return bytes(data)


def _decompressed(file: object) -> Iterator[bytes]:
    """The zlib stream's bytes, chunk by chunk; raises WarmStartError unless it ends exactly at
    the end of the file (zlib checks the stream's own checksum at its end)."""
    stream = zlib.decompressobj()
    while not stream.eof:
        chunk = file.read(READ_CHUNK)  # type: ignore[attr-defined]
        if not chunk:
            raise WarmStartError("truncated")
        try:
            yield stream.decompress(chunk)
        except zlib.error as exc:
            raise WarmStartError(f"corrupt: {exc}") from exc
    if stream.unused_data or file.read(1):  # type: ignore[attr-defined]
        raise WarmStartError("bytes after the end of the records")


def _records(chunks: Iterator[bytes], count: int, max_body_bytes: int) -> Iterator[tuple[str, Record]]:
    buffer = bytearray()
    offset = 0
    for _ in range(count):
        while len(buffer) - offset < RECORD.size:
            offset = _refill(buffer, offset, chunks)
        id_length, body_length, size, mtime_ns, ctime_ns = RECORD.unpack_from(buffer, offset)
        if body_length > max_body_bytes or size > max_body_bytes + 3:  # + 3: a byte order mark
            raise WarmStartError("a record larger than SESSIONS_MAX_FILE_BYTES")
        end = offset + RECORD.size + id_length + body_length
        while len(buffer) < end:
            offset = _refill(buffer, offset, chunks)
            end = offset + RECORD.size + id_length + body_length
        start = offset + RECORD.size
        job_id = buffer[start : start + id_length].decode("ascii", errors="replace")
        if not is_job_id(job_id):
            raise WarmStartError("a record whose job id is not one")
        yield job_id, Record(Version(size, mtime_ns, ctime_ns), bytes(buffer[start + id_length : end]))
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


def write(root: Path, records: Iterable[tuple[str, Version, bytes]], count: int) -> int:
    """Write `count` records atomically (a temporary file in the folder, fsync, rename) and
    return the file's size. Raises OSError when the folder is read-only, full or gone."""
    folder = root / FOLDER
    folder.mkdir(exist_ok=True)
    _remove_abandoned(folder)
    temporary = folder / f"{NAME}.{os.getpid()}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"
    written = 0
    try:
        with open(temporary, "wb") as file:
            file.write(MAGIC + HEADER.pack(time.time_ns(), count))
            stream = zlib.compressobj(COMPRESSION_LEVEL)
            pending: list[bytes] = []
            pending_bytes = 0
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
            file.flush()
            os.fsync(file.fileno())
            size = file.tell()
        os.replace(temporary, path(root))
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return size


def written_at_ns(root: Path) -> int | None:
    """When the warm-start file there now was written (its header), or None if there is none
    or it is not one: one small read, to decide whether writing another is worth it."""
    try:
        with open(path(root), "rb", buffering=0) as file:
            head = file.read(len(MAGIC) + HEADER.size)
    except OSError:
        return None
    if len(head) != len(MAGIC) + HEADER.size or not head.startswith(MAGIC):
        return None
    written: int = HEADER.unpack_from(head, len(MAGIC))[0]
    return written


def _remove_abandoned(folder: Path) -> None:
    cutoff = time.time() - ABANDONED_AFTER_S
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.name.endswith(TEMPORARY_SUFFIX):
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
            except OSError:
                pass  # another writer's, removed meanwhile
