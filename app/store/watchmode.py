"""How this process learns about changes in the folder: native events, polling or rescans only.

`SESSIONS_WATCH=auto` trusts native events (inotify) only on a filesystem where they report
every change. On a network or FUSE filesystem (NFS, SMB, sshfs, s3fs, gcsfuse, 9p, CephFS...)
the kernel hears only what this machine writes through its own mount: a writer on another
machine changes files silently, so `auto` polls there. The filesystem type is read from
`/proc/self/mountinfo`, which touches nothing on the mount itself (a hung file server cannot
hang the decision). docs/network-volumes.md describes the modes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

EffectiveMode = Literal["native", "poll", "off"]

MOUNTINFO = "/proc/self/mountinfo"

# Filesystems whose files change without this kernel seeing the write: native events miss them.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "ceph",
        "glusterfs",
        "afs",
        "lustre",
        "gpfs",
        "beegfs",
        "orangefs",
        "ocfs2",
        "gfs2",
        "davfs",
        "coda",
        "ncpfs",
        "virtiofs",  # a host folder shared with a virtual machine (Docker Desktop, Kata)
        "vboxsf",
        "vmhgfs",
        "prl_fs",
        "fuse",  # a FUSE filesystem that does not name its kind
    }
)
# FUSE filesystems appear as "fuse.<name>" (fuse.sshfs, fuse.s3fs, fuse.gcsfuse...): almost all
# are remote. These few serve a local disk, where every write goes through this kernel.
LOCAL_FUSE = frozenset({"fuseblk", "fuse.lxcfs", "fuse.portal", "fuse.gvfsd-fuse"})


@dataclass(frozen=True, slots=True)
class WatchPlan:
    """The mode chosen, and why: what the log, `/metrics` and `python -m app check` report."""

    mode: EffectiveMode
    setting: str  # SESSIONS_WATCH as set
    filesystem: str  # the folder's filesystem type, "unknown" where it cannot be told
    reason: str  # one short phrase: a metric label and a log field

    def describe(self) -> str:
        """One sentence for an operator."""
        if self.setting != "auto":
            return f"{self.mode} (SESSIONS_WATCH={self.setting}; the folder is on {self.filesystem})"
        if self.mode == "poll":
            return (
                f"poll (SESSIONS_WATCH=auto: the folder is on {self.filesystem}, a network or FUSE "
                "filesystem whose native events miss other machines' writes)"
            )
        return (
            f"native (SESSIONS_WATCH=auto: the folder is on {self.filesystem}, where native events report every change)"
        )


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes."""
    if "\\" not in field:
        return field
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def parse_mountinfo(text: str) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of each line, in the file's order (later mounts last).

    A line: `id parent major:minor root mount-point options [optional fields...] - fstype
    source super-options` (proc(5)); the optional fields end at the lone "-"."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
        except ValueError:
            continue  # not a mountinfo line
        if separator + 1 >= len(fields):
            continue
        mounts.append((_unescape(fields[4]), fields[separator + 1]))
    return mounts


def filesystem_type(folder: Path, mountinfo: str | None = None) -> str | None:
    """The type of the filesystem `folder` (an absolute, resolved path) lives on: that of the
    last-mounted mount point that contains it. None where mountinfo cannot be read (not Linux)."""
    if mountinfo is None:
        try:
            with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as stream:
                mountinfo = stream.read()
        except OSError:
            return None
    path = os.path.normpath(str(folder))
    best: tuple[int, str] | None = None
    for mount_point, fstype in parse_mountinfo(mountinfo):
        inside = path == mount_point or mount_point == "/" or path.startswith(mount_point.rstrip("/") + "/")
        # ">=": the same point mounted again covers what was mounted there before.
        if inside and (best is None or len(mount_point) >= best[0]):
            best = (len(mount_point), fstype)
    return best[1] if best is not None else None


def events_trusted(fstype: str) -> bool:
    """Whether native events report every change on a filesystem of this type."""
    if fstype in LOCAL_FUSE:
        return True
    if fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse."):
        return False
    return True


def plan(setting: str, folder: Path, mountinfo: str | None = None) -> WatchPlan:
    """Decide the mode for SESSIONS_WATCH=`setting` on `folder`."""
    fstype = filesystem_type(folder, mountinfo) or "unknown"
    if setting == "off":
        return WatchPlan("off", setting, fstype, "set by SESSIONS_WATCH")
    if setting == "poll":
        return WatchPlan("poll", setting, fstype, "set by SESSIONS_WATCH")
    if setting == "native":
        return WatchPlan("native", setting, fstype, "set by SESSIONS_WATCH")
    if fstype == "unknown":
        # Not Linux (macOS, Windows: their native watchers see every local change): trust them.
        return WatchPlan("native", setting, fstype, "filesystem unknown")
    if events_trusted(fstype):
        return WatchPlan("native", setting, fstype, "local filesystem")
    return WatchPlan("poll", setting, fstype, "network filesystem")
