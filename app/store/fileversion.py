"""What one version of a session file is, and what a fault reaching a file means.

The reader (app.store.sessionfile) and the reconciler's stats and scans (app.store.reconciler) both ask
here, so that a file version has one signature wherever it was looked at (or every rescan sees a
change that is none), and a fault one reason and one verdict: invalid, gone, or try again.
"""

from __future__ import annotations

import errno
import os
import time

from app.errors import InvalidSessionFile, TransientReadError

# Errors that describe this process or the system, not the file: retry instead of invalidating.
TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EINTR, errno.EAGAIN})
# A file modified this close to when we looked at it may change again within the same timestamp
# tick (coarse clocks, network file systems): the rescan re-reads such "racy" files (as git does).
RACY_WINDOW_NS = 2_000_000_000

# The reasons a file cannot be served before its bytes are looked at (those of its content are
# app.store.sessionfile.build's).
LINK_OUTSIDE = "a link that leads outside the sessions folder"
LINK_TO_NOTHING = "a link to a file that does not exist"
LINK_LOOP = "unreadable: a symbolic link loop"
NOT_A_FILE = "not a regular file"


def too_large(max_bytes: int, size: int | None = None) -> str:
    if size is None:  # it grew past the limit while being read
        return f"larger than SESSIONS_MAX_FILE_BYTES ({max_bytes} bytes)"
    return f"larger than SESSIONS_MAX_FILE_BYTES ({size} > {max_bytes} bytes)"


def signature(st: os.stat_result) -> int:
    """A compact identity of one version of a file: changes when it is replaced or rewritten."""
    return hash((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))


def is_racy(st: os.stat_result, now_ns: int | None = None) -> bool:
    return (time.time_ns() if now_ns is None else now_ns) - st.st_mtime_ns < RACY_WINDOW_NS


def stat_following_links(path: str) -> os.stat_result | None:
    """The metadata a version is known by: the file's, a link's target's; the link's own where
    it leads nowhere (dangling, a loop) or cannot be followed; None if the name is gone."""
    try:
        return os.stat(path)
    except OSError:
        pass
    try:
        return os.lstat(path)
    except OSError:
        return None


def fault(exc: OSError) -> OSError | InvalidSessionFile | TransientReadError:
    """What an error opening, reading or stat-ing a session file means, to raise `from exc`:
    FileNotFoundError (it is gone), TransientReadError (the system failed us: retry) or
    InvalidSessionFile with the reason."""
    if exc.errno in TRANSIENT_ERRNOS:
        return TransientReadError(f"{exc.strerror} (errno {exc.errno})")
    if isinstance(exc, FileNotFoundError):
        return exc
    if exc.errno == errno.ELOOP:
        return InvalidSessionFile(LINK_LOOP)
    return InvalidSessionFile(f"unreadable: {exc.strerror or exc}")


def stat(path: str) -> os.stat_result:
    """The metadata of what a read of `path` would see (a link's target's).

    Raises FileNotFoundError when nothing has the name, InvalidSessionFile when it is a link
    that leads nowhere or cannot be followed (or cannot be looked at), TransientReadError when
    the system failed us.
    """
    try:
        return os.stat(path)
    except FileNotFoundError:
        try:
            os.lstat(path)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise fault(exc) from exc
        raise InvalidSessionFile(LINK_TO_NOTHING) from None
    except OSError as exc:
        raise fault(exc) from exc
