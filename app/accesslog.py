"""The access log: one line per request, built from values the middleware has at hand.

The fields and both formats are those `app.logs` gives a `logging` record of logger
`app.access` (time, level, logger, message, then method, route, path, status, duration_ms,
request_id, client), but without a LogRecord, a formatter and a write per request: the line is
encoded at once and queued on the process's `LogWriter`, which writes in large writes off the
event loop. That per-record machinery cost half of a cache hit's time (issue 9: 9k vs 18k req/s).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import orjson

from app.logwriter import LogWriter

NAME = "app.access"


class _Clock:
    """The formatted second, made once a second: strftime per request would cost more than the
    rest of the line."""

    def __init__(self, convert: Callable[[float], time.struct_time], pattern: str) -> None:
        self._convert = convert
        self._pattern = pattern
        self._second = -1
        self._text = ""

    def second(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._text = time.strftime(self._pattern, self._convert(second))
            self._second = second
        return self._text


class AccessLog:
    """Writes access lines in `fmt` ("json" or "text") to a LogWriter."""

    def __init__(self, writer: LogWriter, fmt: str) -> None:
        self._write = writer.write
        self._json = fmt == "json"
        # The two formatters' clocks (app.logs): JSON in UTC, text in local time as logging's.
        self._utc = _Clock(time.gmtime, "%Y-%m-%dT%H:%M:%S")
        self._local = _Clock(time.localtime, "%Y-%m-%d %H:%M:%S")

    def write(
        self, method: str, route: str, path: str, status: int, seconds: float, request_id: bytes, client: str | None
    ) -> None:
        self._write(self.line(time.time(), method, route, path, status, seconds, request_id, client))

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
        duration_ms = round(seconds * 1000, 3)
        if self._json:
            return (
                orjson.dumps(
                    {
                        "time": f"{self._utc.second(now)}.{millis:03d}Z",
                        "level": "info",
                        "logger": NAME,
                        "message": f"{method} {route} {status}",
                        "method": method,
                        "route": route,
                        "path": path[:256],
                        "status": status,
                        "duration_ms": duration_ms,
                        "request_id": request_id.decode(),
                        "client": client,
                    }
                )
                + b"\n"
            )
        return (
            f"{self._local.second(now)},{millis:03d} INFO    {NAME}: {method} {route} {status} method={method} "
            f"route={route} path={path[:256]} status={status} duration_ms={duration_ms} "
            f"request_id={request_id.decode()} client={client}\n"
        ).encode("utf-8", "backslashreplace")


class LoggerAccessLog:
    """The access log of an app whose process did not configure logging through `app.logs`
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
