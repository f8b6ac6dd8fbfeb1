"""Log lines to stdout without the event loop ever waiting on it.

Every line goes into one queue, in the order written: ready lines (`logging` records, through
`WriterHandler`) and entries (app.ops.accesslog: the values of a request, which the writer's
`formatter` makes into a line). Entries are made into lines in batches, and one thread writes the lines in large
writes: every FLUSH_INTERVAL_S, sooner once WAKE_BYTES wait, and at close (nginx's `access_log
buffer= flush=`). A stdout that stops draining (a stuck log shipper) blocks that thread alone:
what waits is bounded, the lines past the bound are dropped and counted, and once a write goes
through again one line says how many.

A cache hit takes a few microseconds, so its access line must cost far less, and every thread
wake-up and GIL hand-over counts (`python -m bench --only get` compares access log on and off):
- a request only queues a tuple of values it has at hand. Making the line there and then, in
  caches the rest of the request keeps cold, costs a visible share of a cache hit; made
  BATCH_LINES at a time, it costs little. The batch is made by whichever thread queues the line
  that completes it (at load, the event loop: no hand-over), else by the writer thread on its
  timer.
- the writer thread wakes on its timer, not per 64 KiB: each wake-up takes the GIL from the
  event loop twice.
- the queues are deques, whose append and popleft the GIL makes atomic: no lock per line.
- an entry holds only strings, numbers and bytes: the garbage collector stops tracking such a
  tuple, where a thousand tracked ones waiting would be walked at every collection.
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import select
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("app.logs")

BATCH_LINES = 1024  # entries made into lines at a time
MAX_LINES = 8192  # lines and entries waiting to be made into lines, at most
MAX_BYTES = 4 << 20  # bytes of lines waiting to be written, at most (besides the write under way)
WAKE_BYTES = 1 << 20  # this many waiting are written at once, before the timer
FLUSH_INTERVAL_S = 0.1
CLOSE_TIMEOUT_S = 5.0  # at exit, how long a stdout that does not drain may hold the process
_WAIT_WRITABLE_S = 0.5

Entry = tuple[Any, ...]  # the arguments of `LogWriter.formatter`


class LogWriter:
    def __init__(
        self,
        fd: int = 1,
        *,
        max_lines: int = MAX_LINES,
        max_bytes: int = MAX_BYTES,
        batch_lines: int = BATCH_LINES,
        interval_s: float = FLUSH_INTERVAL_S,
    ) -> None:
        self._fd = fd
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._wake_bytes = min(WAKE_BYTES, max_bytes)
        self._batch_lines = min(batch_lines, max_lines)
        self._interval_s = interval_s
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            mode = 0
        # Writes to a pipe or socket of at most PIPE_BUF bytes are never interleaved with other
        # processes' writes (a wrapper or sidecar may share the container's stdout): cut at line
        # ends into pieces of that size there. A file takes one large write.
        self._piece_bytes = select.PIPE_BUF if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else 1 << 62
        self._queue: deque[bytes | Entry] = deque()  # lines and entries, oldest first
        self.formatter: Callable[..., bytes] | None = None  # makes an entry into its line
        self._made: deque[bytes] = deque()  # batches of lines, to write
        # One thread makes a batch at a time, so batches keep the order of the queue.
        self._making = threading.Lock()
        self._made_at = 0.0  # time.monotonic() of the last batch made
        self._lock = threading.Lock()  # guards the figures below
        self._made_bytes = 0  # bytes in _made
        self._dropped = 0  # lines dropped since start
        self._unreported = 0  # lines dropped since the last line saying so
        self._taken = 0  # passes of the writer thread begun...
        self._done = 0  # ...and done
        self._pass_done = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._idle = False  # the writer waits with no timer: nothing is queued
        self._flush_asked = False
        self._closing = False
        self._direct = False  # after a clean close: write at once, there is no thread any more
        self._thread = threading.Thread(target=self._run, name="sessions-log-writer", daemon=True)

    @property
    def dropped(self) -> int:
        """Lines dropped since start because stdout did not drain (or failed)."""
        return self._dropped

    def start(self) -> None:
        self._thread.start()

    def write(self, line: bytes | Entry) -> None:
        """Queue one line (bytes, newline included) or an entry. Never waits on stdout: past the
        bound, the line is dropped."""
        queue = self._queue
        waiting = len(queue)
        if waiting < self._max_lines and not self._direct:
            queue.append(line)
            if waiting + 1 >= self._batch_lines:
                self._make(wait=False)
            elif self._idle:  # read after the append: see _run
                self._idle = False
                self._wake.set()
            return
        if self._direct:
            self._write_direct(line)
            return
        self._count_dropped(1)

    def flush(self, timeout_s: float = CLOSE_TIMEOUT_S) -> bool:
        """Wait until what was queued before the call is written; False after `timeout_s`."""
        if self._direct or not self._thread.is_alive():
            return self._direct
        with self._lock:
            wanted = self._taken + 1  # the next pass takes everything queued until now
        self._flush_asked = True
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
        self._pass()  # anything queued between the thread's last pass and now
        return True

    # --- making lines ---------------------------------------------------------------------------

    def _make(self, wait: bool) -> None:
        """Make what is queued into one batch of lines, behind the batches made before. The
        event loop does not wait for another thread doing it: that one takes its lines too."""
        if not self._making.acquire(blocking=wait):
            return
        try:
            queue, formatter = self._queue, self.formatter
            parts: list[bytes] = []
            failed = 0
            for _ in range(len(queue)):  # popleft is atomic: what comes meanwhile waits its turn
                item = queue.popleft()
                if isinstance(item, bytes):
                    parts.append(item)
                    continue
                try:
                    if formatter is None:
                        raise TypeError("an entry but no formatter")
                    parts.append(formatter(*item))
                except Exception:  # a line that cannot be made must not stop the others
                    failed += 1
            self._made_at = time.monotonic()
            batch = b"".join(parts)
            with self._lock:
                self._dropped += failed
                if self._made_bytes + len(batch) > self._max_bytes:  # stdout is not draining
                    lines = len(parts) - failed
                    self._dropped += lines
                    self._unreported += lines
                    return
                self._made.append(batch)
                self._made_bytes += len(batch)
                early = self._made_bytes >= self._wake_bytes > self._made_bytes - len(batch)
            if early:
                self._wake.set()
        finally:
            self._making.release()

    def _count_dropped(self, lines: int) -> None:
        with self._lock:
            self._dropped += lines
            self._unreported += lines

    # --- the writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            # With nothing queued, wait with no timer: an idle process costs no wake-ups. The
            # flag is set before the queue is looked at, and `write` reads it after appending,
            # so a line queued meanwhile always wakes us.
            self._idle = True
            if not self._queue and not self._made and not self._closing and not self._flush_asked:
                self._wake.wait()
                self._wake.clear()
            self._idle = False
            if not (self._closing or self._flush_asked):
                self._wake.wait(self._interval_s)  # gather the lines of the interval: one large write
            self._wake.clear()
            closing = self._closing  # read first: what was queued before close() is written below
            self._pass()
            if closing:
                self._pass()  # the line saying lines were dropped, if any
                return

    def _pass(self) -> None:
        with self._lock:
            self._taken += 1
            taken = self._taken
        # Lines nobody made into a batch (a quiet loop, other threads' lines) are made here, once
        # they have waited a pass; at load the threads queueing them do it.
        stale = time.monotonic() - self._made_at >= self._interval_s
        if self._queue and (stale or self._flush_asked or self._closing or self._direct):
            self._flush_asked = False
            self._make(wait=True)
        made = self._made
        batches = [made.popleft() for _ in range(len(made))]
        data = b"".join(batches)
        written = self._write_all(data) if data else True
        with self._lock:
            self._made_bytes -= sum(len(batch) for batch in batches)
            if not written:  # stdout failed: nothing to say it on either
                self._dropped += data.count(b"\n")
            # Said once stdout took a write, and when there is room for the line saying so.
            unreported = 0
            if written and self._made_bytes < self._max_bytes and len(self._queue) < self._max_lines:
                unreported, self._unreported = self._unreported, 0
            self._done = taken
            self._pass_done.notify_all()
        if unreported:
            # Through logging, so that it has the format of every other line; it is queued
            # behind what was just written, and goes out with the next pass.
            logger.warning(
                "log lines dropped: stdout was not draining", extra={"dropped": unreported, "total": self._dropped}
            )

    def _write_all(self, data: bytes) -> bool:
        """Write whole lines, in pieces of at most `_piece_bytes` (a longer line alone); False
        when stdout fails (closed, or an error): nothing can be written then."""
        try:
            view = memoryview(data)
            start, size, piece = 0, len(data), self._piece_bytes
            while start < size:
                end = size
                if start + piece < size:
                    cut = data.rfind(b"\n", start, start + piece)
                    if cut < 0:  # a line longer than a piece
                        cut = data.find(b"\n", start + piece)
                    if cut >= 0:
                        end = cut + 1
                self._write_bytes(view[start:end])
                start = end
            return True
        except OSError:
            return False

    def _write_bytes(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:  # someone made the shared stdout non-blocking
                select.select([], [self._fd], [], _WAIT_WRITABLE_S)

    def _write_direct(self, line: bytes | Entry) -> None:
        try:
            if not isinstance(line, bytes):
                if self.formatter is None:
                    raise TypeError("an entry but no formatter")
                line = self.formatter(*line)
            self._write_bytes(line)
        except Exception as exc:
            if not (isinstance(exc, OSError) and exc.errno == errno.EPIPE):
                self._count_dropped(1)


class WriterHandler(logging.Handler):
    """A logging handler whose lines join the access lines in the same queue, in order."""

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
