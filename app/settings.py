"""Settings, read once from an environment mapping into a frozen dataclass.

`SETTINGS` is the one table of the environment variables: each names its field of `Settings`,
its parser and what it is for; each default is written once, on the field. `load_settings` takes
the mapping as an argument so tests pass a plain dict and never touch `os.environ`; a bad value
raises `SettingsError` naming the variable, which the entry points turn into exit status 2.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

WatchMode = Literal["auto", "poll", "native", "off"]
WarmStart = Literal["auto", "off"]
LogFormat = Literal["json", "text"]
LogLevel = Literal["debug", "info", "warning", "error"]

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
    warm_start: WarmStart = "auto"
    warm_start_dir: Path | None = None  # None: .warmstart in the sessions folder
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


def _folder(raw: str) -> Path:
    raw = raw.strip()
    path = Path(raw).expanduser()
    if not path.exists():
        raise ValueError(f"folder {raw!r} does not exist")
    if not path.is_dir():
        raise ValueError(f"{raw!r} is not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ValueError(f"folder {raw!r} is not readable")
    return path.resolve()


def _warm_start_folder(raw: str) -> Path:
    """A folder the service writes the warm-start file in, created if its parent exists: on a
    mount of its own, the sessions folder itself can stay read-only."""
    path = Path(raw.strip()).expanduser()
    if not path.is_absolute():
        raise ValueError(f"expected an absolute path, got {raw.strip()!r}")
    if not path.parent.is_dir():
        raise ValueError(f"the folder {str(path.parent)!r} that would hold it does not exist")
    return path


def _milliseconds(minimum: int) -> Callable[[str], float]:
    """A whole number of milliseconds, as seconds."""
    integer = _integer(minimum)
    return lambda raw: integer(raw) / 1000


# Set but empty (a template that rendered nothing) fails closed for the token: an open API is
# never what someone who set the variable meant.
def _token(raw: str) -> str:
    token = raw.strip()
    if not token:
        raise ValueError("is set but empty")
    return token


def _token_file(raw: str) -> str:
    if not raw.strip():
        raise ValueError("is set but empty")
    try:
        # A Kubernetes secret mount usually ends in a newline that is not part of the token.
        token = Path(raw).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {raw!r}: {exc}") from exc
    if not token:
        raise ValueError(f"{raw!r} is empty")
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


class Setting(NamedTuple):
    variable: str
    field: str  # of Settings, whose default applies when the variable is unset or blank
    parse: Callable[[str], Any]  # raises ValueError with what is wrong
    description: str
    blank_is_unset: bool = True  # False: set but blank is an error (the token: fails closed)
    unset: str | None = None  # read as if given when the variable is unset (a field without a default)


SETTINGS = (
    Setting("SESSIONS_DIR", "sessions_dir", _folder, "The folder of session files.", unset="data/sessions"),
    Setting(
        "SESSIONS_CACHE_MAX_ENTRIES",
        "cache_max_entries",
        _integer(0),
        "LRU bound in documents (0: no cache, every GET reads the file off the event loop).",
    ),
    Setting("SESSIONS_CACHE_MAX_BYTES", "cache_max_bytes", _integer(0), "LRU bound in bytes of documents."),
    Setting("SESSIONS_MAX_FILE_BYTES", "max_file_bytes", _integer(1), "Larger files are invalid."),
    Setting(
        "SESSIONS_WATCH",
        "watch",
        _choice("auto", "poll", "native", "off"),
        "auto (native events, polling on network filesystems), poll, native, or off (rescans only).",
    ),
    Setting(
        "SESSIONS_POLL_INTERVAL_MS",
        "poll_interval_s",
        _milliseconds(10),
        "Polling period in poll mode, and while the native watcher is down.",
    ),
    Setting(
        "SESSIONS_RESCAN_INTERVAL_S", "rescan_interval_s", _seconds(0), "Full reconciliation period; 0 turns it off."
    ),
    Setting(
        "SESSIONS_WARM_START",
        "warm_start",
        _choice("auto", "off"),
        "auto (on a network filesystem, start from the warm-start file a replica left in the folder) or off.",
    ),
    Setting(
        "SESSIONS_WARM_START_DIR",
        "warm_start_dir",
        _warm_start_folder,
        "Where replicas keep the warm-start file (shared by them; default: .warmstart in SESSIONS_DIR).",
    ),
    Setting(
        "SESSIONS_API_TOKEN",
        "api_token",
        _token,
        "When set, /api/ needs Authorization: Bearer <token>.",
        blank_is_unset=False,
    ),
    Setting(
        "SESSIONS_API_TOKEN_FILE",
        "api_token",
        _token_file,
        "A file holding the token instead (a mounted secret); not with SESSIONS_API_TOKEN.",
        blank_is_unset=False,
    ),
    Setting(
        "SESSIONS_SHUTDOWN_DELAY_S",
        "shutdown_delay_s",
        _seconds(0),
        "After SIGTERM, keep serving (readiness 503) this long before draining.",
    ),
    Setting("SESSIONS_LOG_FORMAT", "log_format", _choice("json", "text"), "json for machines, text for people."),
    Setting("SESSIONS_LOG_LEVEL", "log_level", _choice("debug", "info", "warning", "error"), "The least level logged."),
    Setting(
        "SESSIONS_KEEPALIVE_S",
        "keepalive_s",
        _seconds(1),
        "Idle keep-alive, longer than the load balancer's; also the longest a request's head may take.",
    ),
    Setting(
        "SESSIONS_GRACEFUL_TIMEOUT_S",
        "graceful_timeout_s",
        _seconds(0),
        "Longest wait for requests in flight at shutdown.",
    ),
    Setting("SESSIONS_HISTORY", "history", _integer(1), "Changes kept for watches to resume from."),
    # Fractions of a second are for tests; a stream or its heartbeat needs some time.
    Setting(
        "SESSIONS_BOOKMARK_S",
        "bookmark_s",
        _seconds(0.05),
        "A stream idle this long gets a BOOKMARK; below the proxies' idle timeouts.",
    ),
    Setting(
        "SESSIONS_STREAM_TIMEOUT_S",
        "stream_timeout_s",
        _seconds(0.05),
        "A stream ends after a random time between this and twice this.",
    ),
    Setting("SESSIONS_MAX_WAIT_S", "max_wait_s", _seconds(0), "Cap on a long poll's Prefer: wait."),
    Setting(
        "SESSIONS_MAX_STREAMS",
        "max_streams",
        _integer(0),
        "Streams and waiting long polls at once; past it a 503.",
    ),
    Setting(
        "SESSIONS_CORS_ORIGINS",
        "cors_origins",
        _cors_origins,
        "Origins browsers may call from (comma-separated, or *); unset: CORS off.",
    ),
    Setting(
        "SESSIONS_FINISHED_STATUSES",
        "finished_statuses",
        _statuses,
        "Statuses that include_saved=false leaves out (comma-separated).",
    ),
)
EXCLUSIVE = (("SESSIONS_API_TOKEN", "SESSIONS_API_TOKEN_FILE"),)


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Read and validate every setting; raise `SettingsError` on the first bad one."""
    for first, second in EXCLUSIVE:
        if first in environ and second in environ:
            raise SettingsError(second, f"set either it or {first}, not both")
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = environ.get(setting.variable)
        if raw is None or (setting.blank_is_unset and not raw.strip()):
            if setting.unset is None:
                continue
            raw = setting.unset
        try:
            values[setting.field] = setting.parse(raw)
        except ValueError as exc:
            raise SettingsError(setting.variable, str(exc)) from exc
    return Settings(**values)
