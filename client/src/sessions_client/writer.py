"""Writing session files the way the service reads them best: `SessionWriter`.

`SessionWriter(folder).save(job_id, document)` writes `<job_id>.json` atomically (a hidden
temporary file in the folder, fsync, rename: a reader sees the old version or the new one,
never half of one), then announces it: one line `<job_id>` appended to this process's journal
in `<folder>/.announce/`. Every replica of the service that polls the folder (a network volume)
reads the journals every ~100 ms and looks at the file again, instead of waiting for its next
poll to notice. An announcement is only a hint: if it is lost the poll still sees the change.

The journal format (shared with the service's reader, docs/network-volumes.md):
- `<folder>/.announce/<writer-id>-<seq>.journal`, one writer process at a time per journal;
  writer-id is the host name, the process id and random hex; seq counts from 1.
- ASCII lines `<job_id>\\n`, appended with O_APPEND, one write per announcement (a batch in one
  write); a blank line when the journal is opened (readers skip it).
- Past 1 MiB the writer starts its next journal, then deletes the one before its previous one;
  at start and at each rotation it deletes journals unchanged for an hour (dead writers').
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger("sessions_client.writer")

JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ANNOUNCE_FOLDER = ".announce"
JOURNAL_SUFFIX = ".journal"
ROTATE_BYTES = 1 << 20
ABANDONED_S = 3600.0  # a journal unchanged this long belongs to a writer that is gone


def validate_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or JOB_ID.fullmatch(job_id) is None:
        raise ValueError(f"not a job id: {job_id!r} (wanted ^[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}$)")
    return job_id


def _host() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "", socket.gethostname().split(".")[0])[:24]
    return host or "writer"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Journal:
    """This process's journal in one folder: shared by every SessionWriter of the folder, so
    that `SessionWriter(folder).save(...)` called afresh each time still appends to one journal."""

    def __init__(self, folder: Path, writer_id: str, *, shared: bool = False) -> None:
        self.folder = folder / ANNOUNCE_FOLDER
        self.writer_id = writer_id
        # shared: short-lived processes (the commands) append to one journal per host, opened
        # for each append, instead of leaving one journal each for readers to follow.
        self.shared = shared
        self.lock = threading.Lock()
        self.seq = 0
        self.fd = -1
        self.size = 0
        self._warned = False

    def path(self, seq: int) -> Path:
        return self.folder / f"{self.writer_id}-{seq}{JOURNAL_SUFFIX}"

    def open(self) -> None:
        with self.lock:
            if self.fd < 0 and not self.shared:
                self._start_next()

    def append(self, job_ids: Iterable[str]) -> None:
        data = "".join(f"{job_id}\n" for job_id in job_ids).encode("ascii")
        if not data:
            return
        with self.lock:
            try:
                if self.shared:
                    self._append_shared(data)
                    return
                if self.fd >= 0 and os.fstat(self.fd).st_nlink == 0:
                    self._close()  # the journal was deleted under us: lines there reach no one
                if self.fd < 0:
                    self._start_next()
                _write_all(self.fd, data)
                self.size += len(data)
                if self.size > ROTATE_BYTES:
                    self._rotate()
                self._warned = False
            except OSError as exc:
                # The document is saved; only the hint is lost (the service's poll sees the
                # change). Start a journal afresh next time: this one may be gone.
                self._close()
                if not self._warned:
                    logger.warning("cannot announce a change; readers will see it at their next poll: %s", exc)
                    self._warned = True

    def _start_next(self) -> None:
        self.folder.mkdir(exist_ok=True)  # again if it was deleted
        if self.seq == 0:
            self._housekeeping()
        self.seq += 1
        fd = os.open(self.path(self.seq), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            # Never empty: a network client that cached a size of 0 could not read past it.
            _write_all(fd, b"\n")
        except OSError:
            os.close(fd)
            raise
        self.fd, self.size = fd, 1

    def _rotate(self) -> None:
        self._close()
        self._start_next()
        # One old journal stays for readers still reading it; the one before goes.
        self._unlink(self.path(self.seq - 2))
        self._housekeeping()

    def _append_shared(self, data: bytes) -> None:
        self.folder.mkdir(exist_ok=True)
        if self.seq == 0:
            self.seq = max(self._own_seqs(), default=1)
            self._housekeeping()
        fd = os.open(self.path(self.seq), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, data)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > ROTATE_BYTES:
            self.seq += 1
            with open(self.path(self.seq), "ab") as stream:
                stream.write(b"\n")
            self._unlink(self.path(self.seq - 2))

    def _own_seqs(self) -> list[int]:
        prefix = self.writer_id + "-"
        seqs = []
        with os.scandir(self.folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(prefix) and name.endswith(JOURNAL_SUFFIX):
                    seq = name[len(prefix) : -len(JOURNAL_SUFFIX)]
                    if seq.isdigit():
                        seqs.append(int(seq))
        return seqs

    def _housekeeping(self) -> None:
        """Delete the journals of writers gone for an hour: nothing else ever would."""
        cutoff = time.time() - ABANDONED_S
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    if not entry.name.endswith(JOURNAL_SUFFIX) or entry.name.startswith(self.writer_id + "-"):
                        continue
                    try:
                        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(entry.path)
                    except OSError:
                        pass  # another writer deleted it first
        except OSError:
            pass

    def _unlink(self, path: Path) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass

    def _close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


_journals: dict[tuple[str, bool], _Journal] = {}
_journals_lock = threading.Lock()
_writer_id: str | None = None


def _journal_for(folder: Path, *, shared: bool) -> _Journal:
    global _writer_id
    key = (os.path.realpath(folder), shared)
    with _journals_lock:
        journal = _journals.get(key)
        if journal is None:
            if shared:
                writer_id = f"{_host()}-shell"
            else:
                if _writer_id is None:
                    _writer_id = f"{_host()}-{os.getpid()}-{secrets.token_hex(4)}"
                writer_id = _writer_id
            journal = _journals[key] = _Journal(folder, writer_id, shared=shared)
        return journal


def _forget_journals_in_child() -> None:
    """A forked child is another writer: it must not append to its parent's journal."""
    global _writer_id, _journals_lock
    _journals.clear()
    _writer_id = None
    _journals_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_journals_in_child)


class SessionWriter:
    """Saves and deletes session files in `folder` (the service's SESSIONS_DIR, as this machine
    mounts it) and announces each change to the service. Thread-safe; cheap to create (the
    journal is per process and folder), but the first one opens the journal: create it at
    start-up so that readers find the journal before the first save."""

    def __init__(self, folder: str | os.PathLike[str], *, _shared_journal: bool = False) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(self.folder))
        self._shared = _shared_journal
        try:
            self._journal().open()
        except OSError as exc:  # a read-only .announce: saving still works, unannounced
            logger.warning("cannot open the announcement journal: %s", exc)

    def _journal(self) -> _Journal:
        # Looked up at each use: in a forked child the same writer gets a journal of its own.
        return _journal_for(self.folder, shared=self._shared)

    def save(self, job_id: str, document: Mapping[str, Any] | bytes) -> Path:
        """Write `<job_id>.json` atomically and announce it. `document`: a JSON object as a
        mapping (its `job_id`, if any, must be `job_id`), or the file's bytes as they are."""
        validate_job_id(job_id)
        if isinstance(document, bytes | bytearray | memoryview):
            data = bytes(document)
        elif isinstance(document, Mapping):
            if "job_id" in document and document["job_id"] != job_id:
                raise ValueError(f"the document's job_id {document['job_id']!r} is not {job_id!r}")
            data = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        else:
            raise TypeError(f"a document is a mapping or bytes, not {type(document).__name__}")
        target = self.folder / f"{job_id}.json"
        # Hidden and *.tmp: the service never takes it for a session, whatever its state.
        temporary = self.folder / f".{job_id}.{secrets.token_hex(4)}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, target)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        self._sync_folder()
        self._journal().append((job_id,))
        return target

    def delete(self, job_id: str) -> bool:
        """Delete `<job_id>.json` and announce it; False if there was no such file."""
        validate_job_id(job_id)
        try:
            os.unlink(self.folder / f"{job_id}.json")
            existed = True
        except FileNotFoundError:
            existed = False
        self._journal().append((job_id,))
        return existed

    def announce(self, *job_ids: str) -> None:
        """Announce files written by other means (each `<job_id>.json` written complete, e.g.
        by a rename): readers look at them again."""
        for job_id in job_ids:
            validate_job_id(job_id)
        self._journal().append(job_ids)

    def _sync_folder(self) -> None:
        """Make the rename durable; best effort (some filesystems cannot fsync a folder)."""
        try:
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
