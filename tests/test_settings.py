from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import SETTINGS, Settings, SettingsError, load_settings
from tests.support import REPO, server_env


def test_defaults(sessions_dir: Path) -> None:
    settings = load_settings({"SESSIONS_DIR": str(sessions_dir)})
    assert settings == Settings(sessions_dir=sessions_dir.resolve())
    assert settings.cache_max_entries == 100_000
    assert settings.cache_max_bytes == 268_435_456
    assert settings.max_file_bytes == 8_388_608
    assert settings.watch == "auto"
    assert settings.poll_interval_s == 0.5
    assert settings.rescan_interval_s == 60
    assert settings.api_token is None
    assert settings.shutdown_delay_s == 0
    assert (settings.log_format, settings.log_level) == ("json", "info")
    assert settings.keepalive_s == 75
    assert settings.graceful_timeout_s == 20
    assert (settings.warm_start, settings.warm_start_dir) == ("auto", None)  # None: .warmstart in SESSIONS_DIR


def test_values_are_read(sessions_dir: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")  # a secret mount ends in a newline that is not the token's
    settings = load_settings(
        {
            "SESSIONS_DIR": str(sessions_dir),
            "SESSIONS_CACHE_MAX_ENTRIES": "10",
            "SESSIONS_CACHE_MAX_BYTES": "1000",
            "SESSIONS_MAX_FILE_BYTES": "500",
            "SESSIONS_WATCH": "poll",
            "SESSIONS_POLL_INTERVAL_MS": "250",
            "SESSIONS_RESCAN_INTERVAL_S": "0",
            "SESSIONS_API_TOKEN_FILE": str(token_file),
            "SESSIONS_SHUTDOWN_DELAY_S": "5",
            "SESSIONS_LOG_FORMAT": "text",
            "SESSIONS_LOG_LEVEL": "warning",
            "SESSIONS_KEEPALIVE_S": "90",
            "SESSIONS_GRACEFUL_TIMEOUT_S": "30",
            "SESSIONS_WARM_START": "off",
            "SESSIONS_WARM_START_DIR": str(tmp_path / "warm-start"),
        }
    )
    assert (settings.cache_max_entries, settings.cache_max_bytes, settings.max_file_bytes) == (10, 1000, 500)
    assert (settings.watch, settings.poll_interval_s, settings.rescan_interval_s) == ("poll", 0.25, 0)
    assert settings.api_token == "s3cret"
    assert (settings.shutdown_delay_s, settings.keepalive_s, settings.graceful_timeout_s) == (5, 90, 30)
    assert (settings.log_format, settings.log_level) == ("text", "warning")
    assert (settings.warm_start, settings.warm_start_dir) == ("off", tmp_path / "warm-start")


def test_finished_statuses(sessions_dir: Path) -> None:
    default = load_settings({"SESSIONS_DIR": str(sessions_dir)}).finished_statuses
    assert default == {"completed", "failed", "cancelled"}
    assert load_settings({"SESSIONS_DIR": str(sessions_dir), "SESSIONS_FINISHED_STATUSES": ""}).finished_statuses == (
        default
    )
    given = " completed, failed,cancelled ,pending_review,Done"  # spaces around items dropped, case kept
    settings = load_settings({"SESSIONS_DIR": str(sessions_dir), "SESSIONS_FINISHED_STATUSES": given})
    assert settings.finished_statuses == {"completed", "failed", "cancelled", "pending_review", "Done"}


BAD_SETTINGS = [
    ("SESSIONS_DIR", "/does/not/exist", "does not exist"),
    ("SESSIONS_CACHE_MAX_ENTRIES", "-1", "at least 0"),
    ("SESSIONS_CACHE_MAX_BYTES", "lots", "whole number"),
    ("SESSIONS_MAX_FILE_BYTES", "0", "at least 1"),
    ("SESSIONS_WATCH", "inotify", "one of auto, poll, native, off"),
    ("SESSIONS_POLL_INTERVAL_MS", "1.5", "whole number"),
    ("SESSIONS_RESCAN_INTERVAL_S", "-5", "at least 0"),
    ("SESSIONS_WARM_START", "on", "one of auto, off"),
    ("SESSIONS_WARM_START_DIR", "relative/warm-start", "absolute path"),
    ("SESSIONS_WARM_START_DIR", "/no/such/parent/warm-start", "does not exist"),
    ("SESSIONS_SHUTDOWN_DELAY_S", "nan", "finite"),
    ("SESSIONS_LOG_FORMAT", "xml", "one of json, text"),
    ("SESSIONS_LOG_LEVEL", "loud", "one of"),
    ("SESSIONS_KEEPALIVE_S", "0", "at least 1"),
    ("SESSIONS_GRACEFUL_TIMEOUT_S", "soon", "number of seconds"),
    ("SESSIONS_API_TOKEN", "   ", "empty"),
    ("SESSIONS_API_TOKEN_FILE", "/no/such/token", "cannot read"),
    ("SESSIONS_API_TOKEN_FILE", "", "set but empty"),  # fails closed, not an open API
    ("SESSIONS_FINISHED_STATUSES", "completed,,failed", "an empty one"),
    ("SESSIONS_FINISHED_STATUSES", " , ", "an empty one"),
    ("SESSIONS_FINISHED_STATUSES", "done\x00", "printable"),
    ("SESSIONS_FINISHED_STATUSES", ",".join(f"s{n}" for n in range(65)), "at most 64"),
]


@pytest.mark.parametrize(("variable", "value", "problem"), BAD_SETTINGS)
def test_bad_setting_names_the_variable(sessions_dir: Path, variable: str, value: str, problem: str) -> None:
    environ = {"SESSIONS_DIR": str(sessions_dir), variable: value}
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    assert caught.value.variable == variable
    assert problem in caught.value.problem


def test_sessions_dir_must_be_a_folder(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(SettingsError, match="not a folder"):
        load_settings({"SESSIONS_DIR": str(a_file)})


@pytest.mark.parametrize(("variable", "value", "problem"), [*BAD_SETTINGS[:6], BAD_SETTINGS[-4]])
def test_bad_setting_exits_2_before_listening(sessions_dir: Path, variable: str, value: str, problem: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "--port", "1"],  # port 1: would fail if it got to listening
        cwd=REPO,
        env=server_env(sessions_dir, {variable: value}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{variable}: ") and problem in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("flag", [["--workers", "2"], ["--port", "70000"]])
def test_bad_flag_exits_2(sessions_dir: Path, flag: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", *flag],
        cwd=REPO,
        env=server_env(sessions_dir),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert flag[0] in result.stderr


def test_one_table_names_every_setting() -> None:
    """Every field of Settings comes from a row of SETTINGS, each row names a field and says
    what it is for, and only the entry points read the environment (once, through the table)."""
    fields = {field.name for field in dataclasses.fields(Settings)}
    assert {setting.field for setting in SETTINGS} == fields
    assert all(setting.description.endswith(".") for setting in SETTINGS)
    assert len({setting.variable for setting in SETTINGS}) == len(SETTINGS)
    readers = {
        str(path.relative_to(REPO))
        for path in (REPO / "app").rglob("*.py")
        if "environ" in (text := path.read_text(encoding="utf-8")) or "getenv" in text
    }
    assert readers == {"app/settings.py", "app/__main__.py", "app/ops/check.py"}


def test_a_blank_variable_takes_the_fields_default(sessions_dir: Path) -> None:
    blank = {setting.variable: " " for setting in SETTINGS if setting.blank_is_unset}
    assert load_settings({**blank, "SESSIONS_DIR": str(sessions_dir)}) == Settings(sessions_dir=sessions_dir.resolve())
