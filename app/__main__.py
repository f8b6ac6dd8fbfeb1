"""`python -m app [--host H] [--port P]` serves; `python -m app check [DIR]` validates a sessions
folder offline; `python -m app --version` prints the version. A bad setting exits with status 2
before listening."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from app import __version__
from app.settings import SettingsError, load_settings


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="Serve job sessions from a folder.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["check"]:
        from app.ops.check import main as check_main

        return check_main(args[1:])

    options = _serve_parser().parse_args(args)
    if not 0 <= options.port <= 65535:
        print(f"--port: must be from 0 to 65535, got {options.port}", file=sys.stderr)
        return 2
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        print(f"{exc.variable}: {exc.problem}", file=sys.stderr)
        return 2

    from app.ops.logs import configure_logging
    from app.server.server import run

    configure_logging(settings)
    run(settings, options.host, options.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
