"""SESSIONS_WATCH=auto decides from the folder's filesystem type (read in /proc/self/mountinfo)
whether native events can be trusted: docs/network-volumes.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import SettingsError, load_settings
from app.store.watchmode import events_trusted, filesystem_type, parse_mountinfo, plan

# A container's mountinfo, trimmed: an overlay root, local volumes, and the network and FUSE
# mounts a shared sessions folder lives on (the optional fields vary in number).
MOUNTINFO = """\
1082 959 0:148 / / rw,relatime master:512 - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
1083 1082 0:151 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1090 1082 259:1 /var/lib/kubelet/pods/x/volumes/data /data rw,relatime - ext4 /dev/nvme0n1p1 rw
1091 1082 0:52 /exports/sessions /mnt/nfs rw,relatime shared:7 master:3 - nfs4 10.0.0.5:/exports rw,vers=4.1
1092 1082 0:53 / /mnt/efs rw,relatime - nfs fs-1.efs:/ rw,vers=4.1
1093 1082 0:54 / /mnt/azure rw,relatime - cifs //acct.file.core.windows.net/share rw,vers=3.1.1
1094 1082 0:55 / /mnt/ssh rw,nosuid,nodev,relatime - fuse.sshfs netfs:/export rw,user_id=0
1095 1082 0:56 / /mnt/bucket rw,nosuid,nodev,relatime - fuse.gcsfuse bucket rw,user_id=0
1096 1082 0:57 / /mnt/s3 rw,nosuid,nodev,relatime - fuse.s3fs s3fs rw,user_id=0
1097 1082 0:58 / /mnt/ceph rw,relatime - ceph 10.0.0.7:/ rw,name=admin
1098 1082 0:59 / /mnt/host rw,relatime - 9p hostshare rw,trans=virtio
1099 1082 0:60 / /mnt/my\\040folder rw,relatime - fuse.sshfs netfs:/x rw
1100 1090 0:61 / /data/tmp rw,relatime - tmpfs tmpfs rw
1101 1082 8:17 / /mnt/ntfs rw,relatime - fuseblk /dev/sdb1 rw
1102 1082 0:62 / /mnt/ssh rw,relatime - ext4 /dev/sdc1 rw
"""


def test_mountinfo_lines_give_their_mount_point_and_type() -> None:
    mounts = parse_mountinfo(MOUNTINFO + "garbage line\n\n")
    assert mounts[0] == ("/", "overlay")
    assert ("/mnt/nfs", "nfs4") in mounts  # two optional fields before the separator
    assert ("/mnt/my folder", "fuse.sshfs") in mounts  # an escaped space
    assert len(mounts) == MOUNTINFO.count("\n")


@pytest.mark.parametrize(
    ("folder", "fstype"),
    [
        ("/srv/sessions", "overlay"),  # nothing mounted closer: the root's
        ("/data", "ext4"),
        ("/data/sessions", "ext4"),
        ("/data/tmp/sessions", "tmpfs"),  # the longest mount point that contains it
        ("/datasets", "overlay"),  # a common prefix of names is not containment
        ("/mnt/nfs/sessions", "nfs4"),
        ("/mnt/efs", "nfs"),
        ("/mnt/azure/a/b", "cifs"),
        ("/mnt/bucket/sessions", "fuse.gcsfuse"),
        ("/mnt/s3/x", "fuse.s3fs"),
        ("/mnt/ceph/x", "ceph"),
        ("/mnt/host/x", "9p"),
        ("/mnt/my folder/sessions", "fuse.sshfs"),
        ("/mnt/ssh/sessions", "ext4"),  # mounted over the sshfs mount: the later mount counts
    ],
)
def test_the_folder_is_on_the_filesystem_of_its_closest_mount(folder: str, fstype: str) -> None:
    assert filesystem_type(Path(folder), MOUNTINFO) == fstype


@pytest.mark.parametrize("fstype", ["nfs", "nfs4", "cifs", "smb3", "9p", "ceph", "glusterfs", "virtiofs", "fuse"])
def test_network_filesystems_are_not_trusted_for_events(fstype: str) -> None:
    assert not events_trusted(fstype)


@pytest.mark.parametrize("fstype", ["fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "fuse.juicefs"])
def test_fuse_filesystems_are_not_trusted_for_events(fstype: str) -> None:
    assert not events_trusted(fstype)


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs", "zfs", "tmpfs", "overlay", "fuseblk"])
def test_local_filesystems_are_trusted_for_events(fstype: str) -> None:
    assert events_trusted(fstype)


def test_auto_polls_on_a_network_filesystem_and_says_why() -> None:
    decided = plan("auto", Path("/mnt/ssh2/sessions"), MOUNTINFO + "1200 1082 0:70 / /mnt/ssh2 rw - fuse.sshfs x rw\n")
    assert (decided.mode, decided.filesystem, decided.reason) == ("poll", "fuse.sshfs", "network filesystem")
    assert "fuse.sshfs" in decided.describe() and decided.describe().startswith("poll")


def test_auto_uses_native_events_on_a_local_filesystem() -> None:
    decided = plan("auto", Path("/data/sessions"), MOUNTINFO)
    assert (decided.mode, decided.filesystem, decided.reason) == ("native", "ext4", "local filesystem")


def test_auto_trusts_native_events_where_the_filesystem_cannot_be_told() -> None:
    decided = plan("auto", Path("/data/sessions"), "")
    assert (decided.mode, decided.filesystem) == ("native", "unknown")


@pytest.mark.parametrize("setting", ["poll", "native", "off"])
def test_an_operator_forces_a_mode_on_any_filesystem(setting: str) -> None:
    for folder in ("/mnt/nfs/sessions", "/data/sessions"):
        decided = plan(setting, Path(folder), MOUNTINFO)
        assert (decided.mode, decided.reason) == (setting, "set by SESSIONS_WATCH")


def test_the_real_temp_folder_is_detected_as_local(tmp_path: Path) -> None:
    """The machine's own mountinfo: a test's temp folder is on a local disk (or tmpfs)."""
    fstype = filesystem_type(tmp_path.resolve())
    assert fstype is not None and events_trusted(fstype), fstype
    assert plan("auto", tmp_path.resolve()).mode == "native"


def test_native_is_a_setting(tmp_path: Path) -> None:
    assert load_settings({"SESSIONS_DIR": str(tmp_path), "SESSIONS_WATCH": "native"}).watch == "native"
    with pytest.raises(SettingsError, match="native"):  # the message lists the choices
        load_settings({"SESSIONS_DIR": str(tmp_path), "SESSIONS_WATCH": "inotify"})
