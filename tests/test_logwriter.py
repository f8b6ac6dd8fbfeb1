"""The log writer and the access line, on real pipes and files: lines in order and whole, a
stdout nobody reads never blocks the writer's callers, dropped lines are counted and said once,
and an access line has exactly the fields and text the `logging` formatters gave it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from app.ops.accesslog import AccessLog, LoggerAccessLog
from app.ops.logs import JsonFormatter, TextFormatter
from app.ops.logwriter import LogWriter, WriterHandler
from tests.support import REPO, wait_until


def line(n: int, size: int = 100) -> bytes:
    return b"%08d " % n + b"x" * (size - 10) + b"\n"


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    for fd in (read_end, write_end):
        try:
            os.close(fd)
        except OSError:
            pass


def drain(fd: int, into: bytearray, stop: threading.Event) -> None:
    os.set_blocking(fd, False)
    while not stop.is_set():
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            stop.wait(0.005)  # a reader's pace
            continue
        if not chunk:
            return
        into.extend(chunk)


def start_draining(fd: int) -> tuple[bytearray, threading.Event, threading.Thread]:
    received = bytearray()
    stop = threading.Event()
    thread = threading.Thread(target=drain, args=(fd, received, stop))
    thread.start()
    return received, stop, thread


def test_lines_are_written_whole_and_in_order(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    writer = LogWriter(fd)
    writer.start()
    try:
        expected = b"".join(line(n) for n in range(5000))
        for n in range(5000):
            writer.write(line(n))
        assert writer.flush(10)
        assert path.read_bytes() == expected
        assert writer.dropped == 0
    finally:
        assert writer.close(10)
        os.close(fd)


def test_lines_are_written_within_the_flush_interval_without_a_flush(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    writer = LogWriter(fd, interval_s=0.1)
    writer.start()
    try:
        writer.write(b"one line\n")  # far below the size that wakes the writer at once
        wait_until(lambda: path.read_bytes() == b"one line\n", 10, what="the periodic write")
    finally:
        writer.close(10)
        os.close(fd)


def test_a_pipe_nobody_reads_never_blocks_and_the_drop_is_counted_then_said_once(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    writer = LogWriter(write_end, max_lines=2560, max_bytes=256 * 1024)
    handler = WriterHandler(writer)
    handler.setFormatter(JsonFormatter())
    app_logs = logging.getLogger("app.logs")
    app_logs.addHandler(handler)
    writer.start()
    try:
        # Megabytes of lines into a 64 KiB pipe nobody reads: every call returns at once.
        started = time.monotonic()
        for n in range(40_000):
            writer.write(line(n))
        assert time.monotonic() - started < 10, "write() waited on the pipe"
        dropped = writer.dropped
        # Of 40,000 lines of 100 bytes, kept at most: what the pipe holds (64 KiB), what the
        # writer is stuck writing and what waits behind it (256 KiB each), and the queue.
        assert 40_000 - (64 + 2 * 256) * 1024 // 100 - 2560 - 200 <= dropped < 40_000, dropped
        assert not writer.flush(0.3)  # the writer thread is stuck in its write, alone

        received, stop, reader = start_draining(read_end)
        try:
            assert writer.flush(10)
            assert writer.flush(10)  # the line saying so is queued behind what was stuck
            wait_until(lambda: b"log lines dropped" in received, 10, what="the line saying lines were dropped")
        finally:
            stop.set()
            reader.join(10)
        lines = bytes(received).splitlines()
        reports = [orjson.loads(x) for x in lines if b"log lines dropped" in x]
        assert len(reports) == 1, reports
        assert reports[0]["dropped"] == dropped == writer.dropped
        assert reports[0]["level"] == "warning" and reports[0]["logger"] == "app.logs"
        kept = [int(x.split()[0]) for x in lines if not x.startswith(b"{")]
        assert kept == sorted(kept) and len(kept) == 40_000 - dropped  # whole lines, in order, none twice
    finally:
        app_logs.removeHandler(handler)
        writer.close(1)


def test_close_writes_everything_and_later_lines_go_out_at_once(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    writer = LogWriter(fd, interval_s=30)  # no periodic write: only close() can have written these
    writer.start()
    for n in range(10):
        writer.write(line(n))
    assert writer.close(10)
    assert path.read_bytes() == b"".join(line(n) for n in range(10))
    writer.write(b"after close\n")
    assert path.read_bytes().endswith(b"after close\n")
    os.close(fd)


def test_close_gives_up_on_a_stdout_that_never_drains(pipe: tuple[int, int]) -> None:
    _, write_end = pipe
    writer = LogWriter(write_end)
    writer.start()
    for n in range(2000):  # 200 KB: more than the pipe holds
        writer.write(line(n))
    started = time.monotonic()
    assert not writer.close(0.5)
    assert time.monotonic() - started < 5


def test_a_closed_stdout_counts_its_lines_as_dropped(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    os.close(read_end)  # writes now fail with EPIPE (Python ignores SIGPIPE)
    writer = LogWriter(write_end)
    writer.start()
    for n in range(3):
        writer.write(line(n))
    assert writer.flush(10)
    assert writer.dropped == 3
    writer.close(10)


CHILD = """
import os, sys
from app.ops.logwriter import LogWriter
writer = LogWriter(1)
writer.start()
name = sys.argv[1].encode()
for n in range(20000):
    writer.write(b'{"writer": "%s", "n": %d, "pad": "%s"}\\n' % (name, n, b"p" * (n % 700)))
    if n % 500 == 0:
        assert writer.flush(60)  # the pace of the reader: no line dropped
assert writer.close(60) and writer.dropped == 0
"""


def test_processes_sharing_a_pipe_never_split_each_others_lines(tmp_path: Path) -> None:
    """Processes that write to one stdout pipe: a write larger than PIPE_BUF may be split where
    another process's write lands, so the writer cuts at line ends below it."""
    read_end, write_end = os.pipe()
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, name], cwd=REPO, stdout=write_end) for name in ("a", "b", "c")
    ]
    os.close(write_end)
    received = bytearray()
    with os.fdopen(read_end, "rb") as stream:
        while chunk := stream.read1(1 << 16):  # until every child has exited: end of file
            received.extend(chunk)
            time.sleep(0.0005)  # a slow reader, so that the pipe is often full
    for child in children:
        assert child.wait(60) == 0
    seen: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    for text in bytes(received).splitlines():
        entry = orjson.loads(text)  # every line whole
        assert entry["pad"] == "p" * (entry["n"] % 700)
        seen[entry["writer"]].append(entry["n"])
    assert all(numbers == list(range(20000)) for numbers in seen.values())


# --- the access line: the fields and text the logging formatters gave it --------------------------


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


ACCESS_CASES = [
    ("GET", "/api/v2/jobs/{job_id}", "/api/v2/jobs/a", 200, 0.000061, b"4095ed33c7a981ba", "127.0.0.1"),
    ("HEAD", "/api/v2/jobs", "/api/v2/jobs/", 304, 0.0123456, b"req-1", "::1"),
    ("GET", "unmatched", '/quote"back\\slash\nnew line\ttab', 404, 1.5, b"x" * 128, None),
    ("GET", "/api/v2/jobs/{job_id}", "/api/v2/jobs/" + "ü" * 300, 400, 0.0, b"a:b/c+d=e", "10.0.0.1"),
]


@pytest.fixture
def access_records() -> Iterator[_Keep]:
    keep = _Keep()
    access = logging.getLogger("app.access")
    access.addHandler(keep)
    level, propagate = access.level, access.propagate
    access.setLevel(logging.INFO)
    access.propagate = False
    yield keep
    access.removeHandler(keep)
    access.setLevel(level)
    access.propagate = propagate


@pytest.mark.parametrize("case", ACCESS_CASES, ids=range(len(ACCESS_CASES)))
@pytest.mark.parametrize("fmt", ["json", "text"])
def test_an_access_line_is_what_the_logging_formatter_wrote(
    access_records: _Keep, pipe: tuple[int, int], fmt: str, case: tuple[str, str, str, int, float, bytes, str | None]
) -> None:
    """The old path (a logging record of app.access, formatted by app.ops.logs) and the new one must
    give the same bytes for the same request at the same instant."""
    LoggerAccessLog().write(*case)
    (record,) = access_records.records
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    expected = (formatter.format(record) + "\n").encode("utf-8", "backslashreplace")
    writer = LogWriter(pipe[1])  # not started: only its line is looked at
    built = AccessLog(writer, fmt).line(record.created, *case)
    assert built == expected
    if fmt == "json":
        entry = orjson.loads(built)
        assert list(entry) == [
            *("time", "level", "logger", "message", "method", "route", "path"),
            *("status", "duration_ms", "request_id", "client"),
        ]
        assert len(entry["path"]) <= 256


def test_the_access_log_writes_to_its_writer(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    writer = LogWriter(fd)
    writer.start()
    access = AccessLog(writer, "json")
    for n in range(3):
        access.write("GET", "/livez", "/livez", 200, 0.001, b"id-%d" % n, "127.0.0.1")
    assert writer.close(10)
    os.close(fd)
    entries = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    assert [e["request_id"] for e in entries] == ["id-0", "id-1", "id-2"]
    assert all(e["message"] == "GET /livez 200" and e["logger"] == "app.access" for e in entries)


def test_request_ids_the_middleware_lets_through_need_no_json_escape() -> None:
    """The access line writes the request id between quotes as it is: only characters that JSON
    leaves unescaped may pass the middleware's check."""
    from app.api.middleware import _REQUEST_ID

    for code in range(256):
        char = bytes([code])
        if _REQUEST_ID.fullmatch(char):
            assert orjson.dumps(char.decode()) == b'"' + char + b'"', char


def test_the_parts_kept_per_method_route_and_status_are_bounded(pipe: tuple[int, int]) -> None:
    access = AccessLog(LogWriter(pipe[1]), "json")
    for n in range(2000):  # methods are the client's to choose
        entry = orjson.loads(access.line(time.time(), f"M{n}", "unmatched", "/x", 405, 0.001, b"r", "127.0.0.1"))
        assert entry["method"] == f"M{n}" and entry["message"] == f"M{n} unmatched 405"
    assert len(access._parts) <= 512
