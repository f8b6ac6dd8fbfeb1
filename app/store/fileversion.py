"""What one version of a session file is, and what a fault reaching a file means.

The reader (app.store.sessionfile) and the reconciler's stats and scans (app.store.reconciler) both ask
here, so that a file version has one signature wherever it was looked at (or every rescan sees a
change that is none), and a fault one reason and one verdict: invalid, gone, or try again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import threading
import time
from typing import NamedTuple

from app.errors import InvalidSessionFile, TransientReadError

# Errors that describe this process, the system or the way to the file server, not the file:
# retry instead of invalidating (a file server gone for a while must not mark sessions stale).
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.EINTR,
        errno.EAGAIN,
        errno.ENOTCONN,  # a FUSE daemon gone (sshfs)
        errno.ECONNABORTED,
        errno.ECONNRESET,
        errno.ETIMEDOUT,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.ESTALE,  # NFS: the handle went stale (a file replaced under us)
    }
)
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


class Version(NamedTuple):
    """What a file's version is known by on every machine that mounts the folder (an inode
    number is not: a FUSE client numbers its own). A write sets the times; the change time, which
    no writer can set back, also changes when a file is replaced or its times are (where the
    filesystem keeps one: SFTP has none, and sshfs reports the modification time instead)."""

    size: int
    mtime_ns: int
    ctime_ns: int


def version(st: os.stat_result) -> Version:
    return Version(st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def signature(st: os.stat_result) -> int:
    """A compact identity of one version of a file: changes when it is replaced or rewritten."""
    return hash((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))


def is_racy(st: os.stat_result, now_ns: int | None = None) -> bool:
    return (time.time_ns() if now_ns is None else now_ns) - st.st_mtime_ns < RACY_WINDOW_NS


def stat_following_links(path: str, dir_fd: int | None = None) -> os.stat_result | None:
    """The metadata a version is known by: the file's, a link's target's; the link's own where
    it leads nowhere (dangling, a loop) or cannot be followed; None if the name is gone.
    (`path` relative to `dir_fd` when given: a scan of 100,000 names saves a path walk each.)"""
    try:
        return os.stat(path, dir_fd=dir_fd)
    except OSError:
        pass
    try:
        return os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
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


# --- metadata past the client's attribute cache -------------------------------------------------
#
# A network filesystem's client caches attributes (NFS's acregmin, FUSE's attr_timeout): within
# that window a stat answers what the file was, however it changed on the server. statx() with
# AT_STATX_FORCE_SYNC asks the filesystem to revalidate instead (NFS sends a GETATTR; FUSE asks
# its daemon); local filesystems ignore the flag. Python has no statx before 3.13's os.statx
# lacks the flag: call libc's through ctypes (which releases the GIL, so a hung server blocks
# this thread alone).

_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_EMPTY_PATH = 0x1000
_AT_STATX_FORCE_SYNC = 0x2000
_STATX_BASIC_STATS = 0x7FF
# struct statx (linux/stat.h), up to stx_dev_minor: mask, blksize, attributes, nlink, uid, gid,
# mode, spare, ino, size, blocks, attributes_mask, then atime, btime, ctime, mtime as (sec,
# nsec, reserved), rdev major/minor, dev major/minor.
_STATX = struct.Struct("=IIQIIIHHQQQQqIiqIiqIiqIiIIII")
_STATX_BUFFER_BYTES = 256


def _load_statx() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.statx
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


_statx = _load_statx()
_buffers = threading.local()


def _buffer() -> ctypes.Array[ctypes.c_char]:
    buffer: ctypes.Array[ctypes.c_char] | None = getattr(_buffers, "buffer", None)
    if buffer is None:
        buffer = _buffers.buffer = ctypes.create_string_buffer(_STATX_BUFFER_BYTES)
    return buffer


def _forced(fd: int, path: bytes, flags: int) -> os.stat_result:
    assert _statx is not None
    buffer = _buffer()
    if _statx(fd, path, flags | _AT_STATX_FORCE_SYNC, _STATX_BASIC_STATS, buffer) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path.decode(errors="surrogateescape") if path else None)
    (_, _, _, nlink, uid, gid, mode, _, ino, size, _, _, a_s, a_ns, _, _, _, _, c_s, c_ns, _, m_s, m_ns, _, _, _,
     major, minor) = _STATX.unpack_from(buffer)  # fmt: skip
    return os.stat_result(
        (
            mode,
            ino,
            os.makedev(major, minor),
            nlink,
            uid,
            gid,
            size,
            a_s,
            m_s,
            c_s,
            a_s + a_ns / 1e9,
            m_s + m_ns / 1e9,
            c_s + c_ns / 1e9,
            a_s * 1_000_000_000 + a_ns,
            m_s * 1_000_000_000 + m_ns,
            c_s * 1_000_000_000 + c_ns,
        )
    )


def forced_stat(path: str) -> os.stat_result:
    """`os.stat(path)` revalidated with the file server (past the client's attribute cache)
    where the filesystem supports it; plain `os.stat` where libc has no statx."""
    if _statx is None:
        return os.stat(path)
    return _forced(_AT_FDCWD, os.fsencode(path), 0)


def forced_lstat(name: str, dir_fd: int) -> os.stat_result:
    """`os.stat(name, dir_fd=dir_fd, follow_symlinks=False)`, revalidated like `forced_stat`."""
    if _statx is None:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    return _forced(dir_fd, os.fsencode(name), _AT_SYMLINK_NOFOLLOW)


def forced_fstat(fd: int) -> os.stat_result:
    """`os.fstat(fd)`, revalidated like `forced_stat`."""
    if _statx is None:
        return os.fstat(fd)
    return _forced(fd, b"", _AT_EMPTY_PATH)
