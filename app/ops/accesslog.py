"""The access log: one line per request, built from values the middleware has at hand.

The fields and both formats are those `app.ops.logs` gives a `logging` record of logger
`app.access` (time, level, logger, message, then method, route, path, status, duration_ms,
request_id, client), but without a LogRecord, a formatter and a write per request: a request
queues its values on the process's `LogWriter`, whose thread makes them into lines in batches
and writes them in large writes, off the event loop. That per-record machinery costs about as
much as the cache hit it logs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import orjson

from app.ops.logwriter import LogWriter

NAME = "app.access"


_PARTS_CACHED = 512  # (method, route, status) triples whose constant parts are kept


class _Clock:
    """The formatted second, made once a second: strftime per request would cost more than the
    rest of the line."""

    def __init__(self, convert: Callable[[float], time.struct_time], pattern: str) -> None:
        self._convert = convert
        self._pattern = pattern
        self._second = -1
        self._text = b""

    def second(self, now: float) -> bytes:
        second = int(now)
        if second != self._second:
            self._text = time.strftime(self._pattern, self._convert(second)).encode()
            self._second = second
        return self._text


class AccessLog:
    """Writes access lines in `fmt` ("json" or "text") to a LogWriter.

    A line is the formatted second, then the parts that depend only on (method, route, status),
    made once per triple, and the values of the request between them. `request_id` must be what
    the middleware lets through (characters that need no JSON escape: its _REQUEST_ID).
    """

    def __init__(self, writer: LogWriter, fmt: str) -> None:
        self._write = writer.write
        self._json = fmt == "json"
        # The two formatters' clocks (app.ops.logs): JSON in UTC, text in local time as logging's.
        if self._json:
            self._clock = _Clock(time.gmtime, "%Y-%m-%dT%H:%M:%S")
        else:
            self._clock = _Clock(time.localtime, "%Y-%m-%d %H:%M:%S")
        self._parts: dict[tuple[str, str, int], tuple[bytes, bytes]] = {}
        writer.formatter = self.line

    def write(
        self, method: str, route: str, path: str, status: int, seconds: float, request_id: bytes, client: str | None
    ) -> None:
        # The values only: the writer thread makes the line, in a batch (see app.ops.logwriter).
        self._write((time.time(), method, route, path, status, seconds, request_id, client))

    def line(
        self,
        now: float,
        method: str,
        route: str,
        path: str,
        status: int,
        seconds: float,
        request_id: bytes,
        client: str | None,
    ) -> bytes:
        millis = int((now - int(now)) * 1000)  # as logging computes record.msecs
        parts = self._parts.get((method, route, status))
        if parts is None:
            parts = self._made(method, route, status)
        if self._json:
            return b'{"time":"%b.%03dZ%b%b%b%r,"request_id":"%b","client":%b}\n' % (
                self._clock.second(now),
                millis,
                parts[0],
                orjson.dumps(path[:256]),
                parts[1],
                round(seconds * 1000, 3),
                request_id,
                orjson.dumps(client),
            )
        return b"%b,%03d%b%b%b%r request_id=%b client=%b\n" % (
            self._clock.second(now),
            millis,
            parts[0],
            path[:256].encode("utf-8", "backslashreplace"),
            parts[1],
            round(seconds * 1000, 3),
            request_id,
            str(client).encode("utf-8", "backslashreplace"),
        )

    def _made(self, method: str, route: str, status: int) -> tuple[bytes, bytes]:
        """The constant parts around the path: (time ... "path":, "status" ... "duration_ms":)."""
        message = f"{method} {route} {status}"
        if self._json:
            parts = (
                b'","level":"info","logger":"%b","message":%b,"method":%b,"route":%b,"path":'
                % (NAME.encode(), orjson.dumps(message), orjson.dumps(method), orjson.dumps(route)),
                b',"status":%d,"duration_ms":' % status,
            )
        else:
            parts = (
                f" INFO    {NAME}: {message} method={method} route={route} path=".encode("utf-8", "backslashreplace"),
                b" status=%d duration_ms=" % status,
            )
        if len(self._parts) < _PARTS_CACHED:  # methods are the client's: a bounded cache
            self._parts[(method, route, status)] = parts
        return parts


class LoggerAccessLog:
    """The access log of an app whose process did not configure logging through `app.ops.logs`
    (embedded in another server): records to the `app.access` logger, whatever handles it."""

    def __init__(self) -> None:
        self._logger = logging.getLogger(NAME)

    def write(
        self, method: str, route: str, path: str, status: int, seconds: float, request_id: bytes, client: str | None
    ) -> None:
        self._logger.info(
            "%s %s %d",
            method,
            route,
            status,
            extra={
                "method": method,
                "route": route,
                "path": path[:256],
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "request_id": request_id.decode(),
                "client": client,
            },
        )
