"""Commands for writers in the shell (console scripts of job-sessions-client):

    sessions-save DIR JOB_ID [FILE]    save FILE (or standard input) as DIR/JOB_ID.json, atomically,
                                       and announce it; the document must be a JSON object
    sessions-announce DIR JOB_ID...    announce files written (complete, e.g. renamed into
                                       place) or deleted by other means

Short-lived processes share one journal per host (`<host>-shell-<seq>.journal`) rather than
leave one each for the service to follow. Exit status: 0 done, 2 bad arguments or document,
1 the folder could not be written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from sessions_client.writer import SessionWriter, validate_job_id


def _job_id(text: str) -> str:
    try:
        return validate_job_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def save_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sessions-save",
        description="Save a session document atomically in the sessions folder and announce it.",
    )
    parser.add_argument("folder", metavar="DIR", help="the sessions folder (SESSIONS_DIR as mounted here)")
    parser.add_argument("job_id", metavar="JOB_ID", type=_job_id)
    parser.add_argument("file", metavar="FILE", nargs="?", help="the JSON document (default: standard input)")
    args = parser.parse_args(argv)
    try:
        if args.file is None or args.file == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as stream:
                data = stream.read()
    except OSError as exc:
        parser.exit(2, f"sessions-save: cannot read the document: {exc}\n")
    try:
        document = json.loads(data)
    except ValueError as exc:
        parser.exit(2, f"sessions-save: the document is not JSON: {exc}\n")
    if not isinstance(document, dict):
        parser.exit(2, "sessions-save: the document is not a JSON object\n")
    if "job_id" in document and document["job_id"] != args.job_id:
        parser.exit(2, f"sessions-save: the document's job_id {document['job_id']!r} is not {args.job_id!r}\n")
    try:
        SessionWriter(args.folder, _shared_journal=True).save(args.job_id, data)
    except OSError as exc:
        parser.exit(1, f"sessions-save: {exc}\n")
    return 0


def announce_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sessions-announce",
        description="Tell the service to look at these sessions' files again (written or deleted by other means).",
    )
    parser.add_argument("folder", metavar="DIR", help="the sessions folder (SESSIONS_DIR as mounted here)")
    parser.add_argument("job_ids", metavar="JOB_ID", nargs="+", type=_job_id)
    args = parser.parse_args(argv)
    try:
        SessionWriter(args.folder, _shared_journal=True).announce(*args.job_ids)
    except OSError as exc:
        parser.exit(1, f"sessions-announce: {exc}\n")
    return 0
