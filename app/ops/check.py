"""`python -m app check [DIR]`: validate a sessions folder offline, before pointing the service
at it. Prints each invalid file with its reason, each `*.json` name that is not a job id (the
service does not serve it), how the service would watch the folder (native events or
polling, and why) and what a start would take from the warm-start file; exit status 1 when any
file is invalid, 2 when the folder cannot be read."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from app.errors import InvalidSessionFile, TransientReadError
from app.settings import Settings, SettingsError, load_settings
from app.store import sessionfile, warmstart
from app.store.watchmode import events_trusted, plan

ID_RULE = "1 to 128 of A-Z a-z 0-9 . _ -, starting with a letter or digit"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m app check", description=__doc__)
    parser.add_argument("folder", nargs="?", help="the sessions folder (default: SESSIONS_DIR)")
    options = parser.parse_args(argv)
    environ = dict(os.environ)
    if options.folder is not None:
        environ["SESSIONS_DIR"] = options.folder
    try:
        settings = load_settings(environ)
    except SettingsError as exc:
        print(f"{exc.variable}: {exc.problem}", file=sys.stderr)
        return 2
    root: Path = settings.sessions_dir
    watch = plan(settings.watch, root)
    print(f"watch: {watch.describe()}", file=sys.stderr)
    print(f"warm start: {_warm_start(settings, watch.filesystem)}", file=sys.stderr)
    valid = invalid = unserved = 0
    try:
        names = sorted(os.listdir(root))
    except OSError as exc:
        print(f"{root}: cannot list: {exc.strerror}", file=sys.stderr)
        return 2
    for name in names:
        job_id = sessionfile.job_id_for(name)
        if job_id is None:
            if _unserved_json(root, name):
                unserved += 1
                shown = _printable(name)
                print(f"{shown}: not served: {shown.removesuffix(sessionfile.SUFFIX)!r} is not a job id ({ID_RULE})")
            continue
        if (root / name).is_dir():
            continue
        try:
            sessionfile.read(root, job_id, settings.max_file_bytes)
        except FileNotFoundError:
            continue  # removed while we looked
        except (InvalidSessionFile, TransientReadError) as exc:
            invalid += 1
            print(f"{name}: {exc}")
        else:
            valid += 1
    summary = f"{valid} valid, {invalid} invalid session files in {root}"
    if unserved:
        summary += f"; {unserved} *.json names not served (not job ids)"
    print(summary, file=sys.stderr)
    return 1 if invalid else 0


def _warm_start(settings: Settings, filesystem: str) -> str:
    """What a start would take from the warm-start file (docs/network-volumes.md, "Warm start")."""
    if settings.warm_start == "off":
        return "off (SESSIONS_WARM_START=off): every start reads every file"
    if events_trusted(filesystem):
        return f"not used: the folder is on {filesystem}, not a network filesystem"
    folder = settings.warm_start_dir or settings.sessions_dir / warmstart.FOLDER
    where = warmstart.path(folder)
    limits = warmstart.Limits(settings.max_file_bytes, settings.cache_max_entries, settings.cache_max_bytes)
    try:
        version, sessions = warmstart.summary(folder, limits)
    except FileNotFoundError:
        return f"{where}: none yet (the first replica to warm up writes it)"
    except Exception as exc:  # whatever it is, a start would not use it
        return f"{where}: cannot be used ({exc}): the next start reads every file"
    age_s = (time.time_ns() - version.mtime_ns) / 1e9
    return f"{where}: {sessions} sessions, written {age_s:.0f} s ago"


def _printable(name: str) -> str:
    """A file name as text that any terminal can take: bytes that are not UTF-8 as escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _unserved_json(root: Path, name: str) -> bool:
    """A `*.json` file a writer most likely meant as a session, whose name is not a job id.
    Hidden names stay silent: they are how writers name their temporary files."""
    if not name.endswith(sessionfile.SUFFIX) or name.startswith("."):
        return False
    try:
        return not (root / name).is_dir()
    except OSError:
        return True
