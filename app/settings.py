"""Settings, read once from an environment mapping into a frozen dataclass.

`load_settings` takes the mapping as an argument so tests pass a plain dict and never touch
`os.environ`; a bad value raises `SettingsError` naming the variable, which `__main__` alone
turns into exit status 2.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

WatchMode = Literal["auto", "poll", "native", "off"]
LogFormat = Literal["json", "text"]
LogLevel = Literal["debug", "info", "warning", "error"]

_T = TypeVar("_T")

# What include_saved=false leaves out unless SESSIONS_FINISHED_STATUSES says otherwise.
FINISHED_STATUSES = frozenset({"completed", "failed", "cancelled"})


class SettingsError(Exception):
    """A setting has a value the service cannot run with."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Settings:
    sessions_dir: Path
    cache_max_entries: int = 100_000
    cache_max_bytes: int = 268_435_456
    max_file_bytes: int = 8_388_608
    watch: WatchMode = "auto"
    poll_interval_s: float = 0.5
    rescan_interval_s: float = 60.0
    api_token: str | None = None
    shutdown_delay_s: float = 0.0
    log_format: LogFormat = "json"
    log_level: LogLevel = "info"
    keepalive_s: float = 75.0
    graceful_timeout_s: float = 20.0
    history: int = 100_000
    bookmark_s: float = 15.0
    stream_timeout_s: float = 900.0
    max_wait_s: float = 300.0
    max_streams: int = 10_000
    cors_origins: tuple[str, ...] = ()  # empty: CORS off; ("*",): any origin
    finished_statuses: frozenset[str] = FINISHED_STATUSES


def _integer(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip().replace("_", ""))
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _seconds(minimum: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number of seconds, got {raw!r}") from None
        if not value >= minimum or value == float("inf"):  # also rejects NaN
            raise ValueError(f"must be a finite number of at least {minimum}, got {raw.strip()}")
        return value

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


MAX_FINISHED_STATUSES = 64
MAX_STATUS_LENGTH = 1024


def _statuses(raw: str) -> frozenset[str]:
    """A comma-separated list of statuses, each as documents write it (case and all)."""
    statuses = [part.strip() for part in raw.split(",")]
    if any(not status for status in statuses):
        raise ValueError(f"expected comma-separated statuses, got an empty one in {raw!r}")
    if len(set(statuses)) > MAX_FINISHED_STATUSES:
        raise ValueError(f"at most {MAX_FINISHED_STATUSES} statuses, got {len(set(statuses))}")
    for status in statuses:
        if len(status) > MAX_STATUS_LENGTH or not status.isprintable():
            raise ValueError(f"a status must be printable and at most {MAX_STATUS_LENGTH} characters: {status[:40]!r}")
    return frozenset(statuses)


def _read(environ: Mapping[str, str], name: str, parse: Callable[[str], _T], default: _T) -> _T:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise SettingsError(name, str(exc)) from exc


def _sessions_dir(environ: Mapping[str, str]) -> Path:
    raw = environ.get("SESSIONS_DIR", "").strip() or "data/sessions"
    path = Path(raw).expanduser()
    if not path.exists():
        raise SettingsError("SESSIONS_DIR", f"folder {raw!r} does not exist")
    if not path.is_dir():
        raise SettingsError("SESSIONS_DIR", f"{raw!r} is not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise SettingsError("SESSIONS_DIR", f"folder {raw!r} is not readable")
    return path.resolve()


def _api_token(environ: Mapping[str, str]) -> str | None:
    token = environ.get("SESSIONS_API_TOKEN")
    token_file = environ.get("SESSIONS_API_TOKEN_FILE")
    if token is not None and token_file is not None:
        raise SettingsError("SESSIONS_API_TOKEN_FILE", "set either it or SESSIONS_API_TOKEN, not both")
    if token_file is not None:
        # Set but empty (a template that rendered nothing) fails closed: an open API is never
        # what someone who set the variable meant.
        if not token_file.strip():
            raise SettingsError("SESSIONS_API_TOKEN_FILE", "is set but empty")
        try:
            # A Kubernetes secret mount usually ends in a newline that is not part of the token.
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError("SESSIONS_API_TOKEN_FILE", f"cannot read {token_file!r}: {exc}") from exc
        if not token:
            raise SettingsError("SESSIONS_API_TOKEN_FILE", f"{token_file!r} is empty")
        return token
    if token is None:
        return None
    token = token.strip()
    if not token:
        raise SettingsError("SESSIONS_API_TOKEN", "is set but empty")
    return token


_ORIGIN = re.compile(r"https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


def _cors_origins(raw: str) -> tuple[str, ...]:
    origins = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if "*" in origins:
        if len(origins) > 1:
            raise ValueError("'*' allows every origin: list origins or give '*' alone")
        return origins
    for origin in origins:
        # A browser's Origin is scheme://host[:port], never with a path or a trailing slash:
        # an origin written with one would never match, and CORS would fail without a word.
        if not _ORIGIN.fullmatch(origin):
            raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path or trailing slash)")
    return tuple(origin.lower() for origin in origins)


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Read and validate every setting; raise `SettingsError` on the first bad one."""
    poll_ms = _read(environ, "SESSIONS_POLL_INTERVAL_MS", _integer(10), 500)
    return Settings(
        sessions_dir=_sessions_dir(environ),
        cache_max_entries=_read(environ, "SESSIONS_CACHE_MAX_ENTRIES", _integer(0), 100_000),
        cache_max_bytes=_read(environ, "SESSIONS_CACHE_MAX_BYTES", _integer(0), 268_435_456),
        max_file_bytes=_read(environ, "SESSIONS_MAX_FILE_BYTES", _integer(1), 8_388_608),
        watch=_read(environ, "SESSIONS_WATCH", _choice("auto", "poll", "native", "off"), "auto"),  # type: ignore[arg-type]
        poll_interval_s=poll_ms / 1000,
        rescan_interval_s=_read(environ, "SESSIONS_RESCAN_INTERVAL_S", _seconds(0), 60.0),
        api_token=_api_token(environ),
        shutdown_delay_s=_read(environ, "SESSIONS_SHUTDOWN_DELAY_S", _seconds(0), 0.0),
        log_format=_read(environ, "SESSIONS_LOG_FORMAT", _choice("json", "text"), "json"),  # type: ignore[arg-type]
        log_level=_read(environ, "SESSIONS_LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info"),  # type: ignore[arg-type]
        keepalive_s=_read(environ, "SESSIONS_KEEPALIVE_S", _seconds(1), 75.0),
        graceful_timeout_s=_read(environ, "SESSIONS_GRACEFUL_TIMEOUT_S", _seconds(0), 20.0),
        history=_read(environ, "SESSIONS_HISTORY", _integer(1), 100_000),
        # Fractions of a second are for tests; a stream or its heartbeat needs some time.
        bookmark_s=_read(environ, "SESSIONS_BOOKMARK_S", _seconds(0.05), 15.0),
        stream_timeout_s=_read(environ, "SESSIONS_STREAM_TIMEOUT_S", _seconds(0.05), 900.0),
        max_wait_s=_read(environ, "SESSIONS_MAX_WAIT_S", _seconds(0), 300.0),
        max_streams=_read(environ, "SESSIONS_MAX_STREAMS", _integer(0), 10_000),
        cors_origins=_read(environ, "SESSIONS_CORS_ORIGINS", _cors_origins, ()),
        finished_statuses=_read(environ, "SESSIONS_FINISHED_STATUSES", _statuses, FINISHED_STATUSES),
    )
