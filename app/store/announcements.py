"""The announcement reader: a thread that follows the writers' journals in `.announce/` and
hands the job ids it reads to the reconciler, as the native watcher hands its events.

Writers that cooperate (the callers' library `SessionWriter`, the `sessions-announce` command)
append one line `<job_id>\\n` to a journal of their own after every change. On a network volume
this is the only prompt way to hear of another machine's write: the folder is otherwise polled.
An announcement is a hint to look again, never the truth: whatever is lost, repeated, torn or
malformed costs freshness only (the poll still reconciles every file). The format, its rotation
and how a reader survives truncation, deletion and torn lines: docs/network-volumes.md.

On a network mount the client caches a file's size for seconds (NFS's attribute cache, FUSE's
attr_timeout), and a read past the cached size finds nothing. With `direct` the journals are
read with O_DIRECT, which asks the file server for the bytes whatever the cache says: reads
start a little below the cached size (a FUSE client shortens a direct read that starts at or
past it). Journals are kept open between reads, so a poll costs one read per journal.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from app.store.pending import PendingChanges

logger = logging.getLogger("app.announcements")

FOLDER = ".announce"
SUFFIX = ".journal"
JOB_ID = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ROTATE_BYTES = 1 << 20  # a writer starts its next journal past this size

POLL_S = 0.1  # an active journal is read this often: announcements arrive within about this
QUIET_POLL_S = 1.0  # a journal quiet for QUIET_AFTER_S (a writer that stopped or died)
QUIET_AFTER_S = 300.0
LIST_S = 1.0  # how often the folder is listed for journals that appeared or vanished
ERROR_RETRY_S = 1.0  # after the folder or the file server failed
CHUNK = 64 * 1024  # bytes per read; a direct read must be a multiple of the block size
ALIGN = 4096  # O_DIRECT offsets and lengths: a multiple of any block size in use
MAX_LINE = 1024  # longer than any job id's line
MAX_CHUNKS_PER_POLL = 64  # a huge backlog is read over several polls, never in one go


def _writer_and_seq(name: str) -> tuple[str, int] | None:
    """`<writer-id>-<seq>.journal` -> (writer-id, seq); None for names readers ignore."""
    if name.startswith(".") or not name.endswith(SUFFIX):
        return None
    writer, _, seq = name[: -len(SUFFIX)].rpartition("-")
    if not writer:
        return (name[: -len(SUFFIX)], 0)  # no sequence number: still a journal, read it
    return (writer, int(seq)) if seq.isdigit() else (name[: -len(SUFFIX)], 0)


@dataclass
class Journal:
    name: str
    offset: int
    fd: int = -1
    identity: tuple[int, int] | None = None
    active_at: float = 0.0  # monotonic time new bytes were last read (or it was found)
    read_at: float = 0.0


@dataclass
class ReaderStats:
    announcements: int = 0  # job ids read
    malformed: int = 0  # complete lines that were not job ids
    journals: int = 0  # journals followed now
    errors: int = 0  # listings or reads that failed


class AnnouncementReader:
    def __init__(self, root: Path, pending: PendingChanges, stop: threading.Event, *, direct: bool) -> None:
        self._folder = root / FOLDER
        self._pending = pending
        self._stop = stop
        self._direct = direct
        self._journals: dict[str, Journal] = {}
        self._buffer = mmap.mmap(-1, CHUNK)  # page-aligned, as O_DIRECT wants
        self._thread = threading.Thread(target=self._run, name="sessions-announcements", daemon=True)
        self._failing = False
        self.stats = ReaderStats()
        # Set once the journals present at start-up and their sizes are known: the warm-up scan
        # waits for it, so a line written after the scan began is read, not skipped.
        self.settled = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        # A read hung on a frozen file server cannot be interrupted: the thread is a daemon,
        # and there is only ever one of it.
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._close_all()

    # --- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._list(at_start=True)
        finally:
            self.settled.set()
        next_list = time.monotonic() + LIST_S
        while not self._stop.wait(POLL_S if not self._failing else ERROR_RETRY_S):
            now = time.monotonic()
            if now >= next_list or self._failing:
                self._list(at_start=False)
                next_list = now + LIST_S
            self._poll(now)

    def _list(self, *, at_start: bool) -> None:
        """Follow the journals that appeared, forget those that vanished. At start-up a journal
        is followed from its present size (the warm-up covers the lines before it); later, a new
        journal is read from its beginning."""
        try:
            with os.scandir(self._folder) as entries:
                names = {entry.name for entry in entries if _writer_and_seq(entry.name) is not None}
        except FileNotFoundError:
            names = set()  # no writer has announced yet, or the folder was deleted: nothing to read
        except OSError as exc:
            self._failed("cannot list the announcement journals", exc)
            return
        for name in self._journals.keys() - names:
            self._forget(name)
        now = time.monotonic()
        for name in names - self._journals.keys():
            offset = 0
            if at_start:
                try:
                    offset = os.stat(self._folder / name).st_size
                except OSError:
                    continue  # gone since listed
            self._journals[name] = Journal(name, offset, active_at=now)
        for journal in self._journals.values():
            self._check_identity(journal)
        self.stats.journals = len(self._journals)
        self._recovered()

    def _check_identity(self, journal: Journal) -> None:
        """A journal replaced under the same name is read again from its beginning."""
        if journal.fd < 0:
            return
        try:
            st = os.stat(self._folder / journal.name)
        except OSError:
            return  # vanished: the next listing forgets it
        if (st.st_dev, st.st_ino) != journal.identity:
            self._close(journal)
            journal.offset = 0

    def _poll(self, now: float) -> None:
        latest: dict[str, int] = {}
        for name in self._journals:
            writer, seq = _writer_and_seq(name) or (name, 0)
            latest[writer] = max(latest.get(writer, 0), seq)
        for journal in list(self._journals.values()):
            writer, seq = _writer_and_seq(journal.name) or (journal.name, 0)
            # A writer appends to its newest journal only: an older one (kept for slow readers)
            # and the journal of a writer long quiet are read less often.
            quiet = seq < latest[writer] or now - journal.active_at > QUIET_AFTER_S
            if quiet and now - journal.read_at < QUIET_POLL_S:
                continue
            journal.read_at = now
            if self._read(journal, now) and journal.offset >= ROTATE_BYTES:
                self._look_for_next(writer, seq)
            if self._stop.is_set():
                return

    def _look_for_next(self, writer: str, seq: int) -> None:
        """A journal past the rotation size is followed by the writer's next one: look for it by
        name rather than wait for a listing (a network client may cache the listing)."""
        name = f"{writer}-{seq + 1}{SUFFIX}"
        if name in self._journals:
            return
        try:
            os.stat(self._folder / name)
        except OSError:
            return
        self._journals[name] = Journal(name, 0, active_at=time.monotonic())
        self.stats.journals = len(self._journals)

    # --- one journal ---------------------------------------------------------------------------------

    def _open(self, journal: Journal) -> bool:
        path = self._folder / journal.name
        flags = os.O_RDONLY | os.O_CLOEXEC
        fd = -1
        if self._direct:
            try:
                fd = os.open(path, flags | os.O_DIRECT)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: no O_DIRECT on this filesystem
                    raise
        if fd < 0:
            fd = os.open(path, flags)
        st = os.fstat(fd)
        journal.fd, journal.identity = fd, (st.st_dev, st.st_ino)
        return True

    def _read(self, journal: Journal, now: float) -> bool:
        """Read what was appended since the last read; True if anything was."""
        try:
            if journal.fd < 0:
                self._open(journal)
            got = False
            for _ in range(MAX_CHUNKS_PER_POLL):
                more, full = self._read_chunk(journal)
                got = got or more
                if not full:
                    break
        except FileNotFoundError:
            self._forget(journal.name)  # deleted (rotated away): its torn last line goes with it
            self.stats.journals = len(self._journals)
            return False
        except OSError as exc:
            self._close(journal)  # a stale handle (the server restarted): open it again later
            self._failed("cannot read an announcement journal", exc)
            return False
        if got:
            journal.active_at = now
        self._recovered()
        return got

    def _read_chunk(self, journal: Journal) -> tuple[bool, bool]:
        """One read from the journal's offset: (whether new lines were read, whether the read
        filled the buffer and there may be more)."""
        offset = journal.offset
        # From the byte before the offset (the newline that ended the last line read): a read
        # that ends before the offset then tells that the journal was truncated.
        start = max(0, offset - 1)
        if self._direct:
            # Below the size the client has cached, aligned; see the module's docstring.
            cached = os.fstat(journal.fd).st_size
            start = max(0, min(start, cached - 1)) // ALIGN * ALIGN
        count = os.preadv(journal.fd, [self._buffer], start)
        if start + count < offset:
            if count < CHUNK:  # a short read ends at the real end: the journal was truncated
                journal.offset = 0
                return False, True
            return False, False  # the cached size lags too far behind: wait for it
        data = self._buffer[offset - start : count]
        complete = data.rfind(b"\n") + 1  # a last line without its newline waits for the rest
        if complete == 0:
            if len(data) > MAX_LINE:  # garbage without newlines: skip it, or it stalls the journal
                self.stats.malformed += 1
                journal.offset = offset + len(data)
                return False, count == CHUNK
            return False, False
        journal.offset = offset + complete
        self._announce(data[:complete])
        return True, count == CHUNK

    def _announce(self, lines: bytes) -> None:
        job_ids: set[str] = set()
        for line in lines.split(b"\n"):
            line = line.rstrip(b"\r")
            if not line:
                continue  # a blank line is the writer opening its journal
            if JOB_ID.fullmatch(line):
                job_ids.add(line.decode("ascii"))
            else:
                self.stats.malformed += 1
        if job_ids:
            self.stats.announcements += len(job_ids)
            self._pending.add(job_ids)

    # --- bookkeeping ---------------------------------------------------------------------------------

    def _close(self, journal: Journal) -> None:
        if journal.fd >= 0:
            try:
                os.close(journal.fd)
            except OSError:
                pass
            journal.fd = -1

    def _forget(self, name: str) -> None:
        journal = self._journals.pop(name, None)
        if journal is not None:
            self._close(journal)

    def _close_all(self) -> None:
        for journal in self._journals.values():
            self._close(journal)

    def _failed(self, what: str, exc: OSError) -> None:
        self.stats.errors += 1
        if not self._failing:
            logger.warning(
                f"{what}; announcements wait, the poll still sees every change",
                extra={"folder": str(self._folder), "error": str(exc)},
            )
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            logger.warning("announcement journals readable again", extra={"folder": str(self._folder)})
            self._failing = False
