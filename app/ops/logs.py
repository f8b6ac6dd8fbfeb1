"""Structured logs on stdout: one JSON object a line, or readable text.

Every line goes through the process's `LogWriter` (app.ops.logwriter): `logging` records through a
handler, access lines straight from the middleware (app.ops.accesslog), in one buffer and in order,
so that neither a request nor a warning ever waits on stdout.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import orjson

from app.ops import logwriter
from app.ops.accesslog import NAME as ACCESS_LOGGER
from app.ops.accesslog import AccessLog, LoggerAccessLog
from app.settings import Settings

# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in record.__dict__.items() if key not in _RESERVED}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return line


class AccessLogger(Protocol):
    def write(
        self, method: str, route: str, path: str, status: int, seconds: float, request_id: bytes, client: str | None
    ) -> None: ...


_access_log: AccessLog | None = None


def configure_logging(settings: Settings) -> None:
    global _access_log
    writer = logwriter.install()
    handler = logwriter.WriterHandler(writer)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    _access_log = AccessLog(writer, settings.log_format)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "watchfiles"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # watchfiles logs every batch at info; its faults reach us as exceptions.
    logging.getLogger("watchfiles").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("uvicorn.access").disabled = True  # app.access writes the access log


def access_log() -> AccessLogger | None:
    """What writes this process's access lines: None when they are off (a level above info)."""
    if not logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO):
        return None
    return _access_log if _access_log is not None else LoggerAccessLog()
