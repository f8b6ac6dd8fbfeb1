"""Log lines to stdout without the event loop ever waiting on it.

Every line (access lines, and `logging` records through `WriterHandler`) is appended to one
in-memory buffer, in the order written; one thread writes the buffer out in large writes: every
FLUSH_INTERVAL_S, sooner once it holds FLUSH_BYTES, and at close (nginx's `access_log buffer=`,
without its per-request system call). A stdout that stops draining (a stuck log shipper) blocks
that thread alone: the buffer is bounded, the lines past the bound are dropped and counted, and
once a write goes through again one line says how many were lost.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import select
import stat
import threading

logger = logging.getLogger("app.logs")

MAX_BUFFER_BYTES = 1 << 20  # unwritten bytes held at most, the line being written included
FLUSH_BYTES = 64 * 1024
FLUSH_INTERVAL_S = 0.1
CLOSE_TIMEOUT_S = 5.0  # at exit, how long a stdout that does not drain may hold the process
_WAIT_WRITABLE_S = 0.5


class LogWriter:
    def __init__(
        self,
        fd: int = 1,
        *,
        max_bytes: int = MAX_BUFFER_BYTES,
        flush_bytes: int = FLUSH_BYTES,
        interval_s: float = FLUSH_INTERVAL_S,
    ) -> None:
        self._fd = fd
        self._max_bytes = max_bytes
        self._flush_bytes = flush_bytes
        self._interval_s = interval_s
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            mode = 0
        # Writes to a pipe or socket of at most PIPE_BUF bytes are never interleaved with other
        # processes' writes (the workers of `--workers N` share the supervisor's stdout): cut at
        # line ends into pieces of that size there. A file takes one large write.
        self._piece_bytes = select.PIPE_BUF if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else max_bytes
        self._lock = threading.Lock()  # guards the fields below
        self._lines: list[bytes] = []
        self._buffered = 0  # bytes in _lines
        self._held = 0  # bytes taken by the writer thread and not written yet
        self._dropped = 0  # lines dropped since start
        self._unreported = 0  # lines dropped since the last line saying so
        self._taken = 0  # passes of the writer thread that took the queued lines...
        self._done = 0  # ...and those that finished writing them
        self._pass_done = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._closing = False
        self._direct = False  # after a clean close: write at once, there is no thread any more
        self._thread = threading.Thread(target=self._run, name="sessions-log-writer", daemon=True)

    @property
    def dropped(self) -> int:
        """Lines dropped since start because stdout did not drain (or failed)."""
        return self._dropped

    def start(self) -> None:
        self._thread.start()

    def write(self, line: bytes) -> None:
        """Queue one line (newline included). Never waits on stdout: past the bound it drops."""
        if self._direct:
            self._write_direct(line)
            return
        size = len(line)
        with self._lock:
            buffered = self._buffered + size
            if buffered + self._held > self._max_bytes:
                self._dropped += 1
                self._unreported += 1
                return
            self._lines.append(line)
            self._buffered = buffered
        if buffered >= self._flush_bytes > buffered - size:  # crossed the mark: wake the writer
            self._wake.set()

    def flush(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """Wait until what was queued before the call is written; False after `timeout_s`."""
        if self._direct or not self._thread.is_alive():
            return self._direct
        with self._lock:
            wanted = self._taken + 1  # the next pass takes everything queued until now
        self._wake.set()
        with self._pass_done:
            return self._pass_done.wait_for(lambda: self._done >= wanted, timeout_s)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """Write everything queued and stop the thread: False when stdout did not take it all
        within `timeout_s` (the rest is lost: a process must be able to exit)."""
        if self._direct or not self._thread.is_alive():
            return self._direct
        self._closing = True
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            return False
        self._direct = True
        return True

    # --- the writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval_s)
            self._wake.clear()
            closing = self._closing  # read first: what was queued before close() is written below
            self._write_pending()
            if closing:
                self._write_pending()  # the line saying lines were dropped, if any
                return

    def _write_pending(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
            self._held, self._buffered = self._buffered, 0
            self._taken += 1
            taken = self._taken
        written = self._write_all(lines) if lines else True
        with self._lock:
            self._held = 0
            if not written:  # stdout failed: nothing to say it on either
                self._dropped += len(lines)
            unreported, self._unreported = (self._unreported, 0) if written else (0, self._unreported)
            self._done = taken
            self._pass_done.notify_all()
        if unreported:
            # Through logging, so that it has the format of every other line; it is queued
            # behind what was just written, and goes out with the next pass.
            logger.warning(
                "log lines dropped: stdout was not draining", extra={"dropped": unreported, "total": self._dropped}
            )

    def _write_all(self, lines: list[bytes]) -> bool:
        """Write the lines, in pieces of whole lines of at most `_piece_bytes`; False when stdout
        fails (closed, or an error): nothing can be written then."""
        try:
            if self._piece_bytes >= self._max_bytes:
                self._write_bytes(b"".join(lines))
                return True
            piece: list[bytes] = []
            size = 0
            for line in lines:
                if size + len(line) > self._piece_bytes and piece:
                    self._write_bytes(b"".join(piece))
                    piece, size = [], 0
                piece.append(line)
                size += len(line)
            if piece:
                self._write_bytes(b"".join(piece))
            return True
        except OSError:
            return False

    def _write_bytes(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:  # someone made the shared stdout non-blocking
                select.select([], [self._fd], [], _WAIT_WRITABLE_S)

    def _write_direct(self, line: bytes) -> None:
        try:
            self._write_bytes(line)
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                self._dropped += 1


class WriterHandler(logging.Handler):
    """A logging handler whose lines join the access lines in the same buffer, in order."""

    def __init__(self, writer: LogWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            self.writer.write(line.encode("utf-8", "backslashreplace") + b"\n")
        except Exception:
            self.handleError(record)


_installed: LogWriter | None = None


def install(fd: int = 1) -> LogWriter:
    """The process's writer for `fd` (stdout), started once; closed (flushed) at exit."""
    global _installed
    if _installed is None:
        _installed = LogWriter(fd)
        _installed.start()
        atexit.register(_installed.close)
    return _installed


def installed() -> LogWriter | None:
    return _installed


def dropped_lines() -> int:
    return _installed.dropped if _installed is not None else 0


def close(timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
    """Write what is queued and stop the process's writer (later lines are written at once)."""
    return _installed.close(timeout_s) if _installed is not None else True
