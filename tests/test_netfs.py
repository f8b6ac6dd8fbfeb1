"""The network-filesystem stand-in itself (tests/support/netfs.py): other tests rely on it modelling a
network volume, so what it models is checked here: writes on the server's side reach the mount
only through the protocol with the attribute cache's delay, the server can go away and come
back, and teardown leaves nothing mounted or running."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.support import netfs, wait_until

pytestmark = pytest.mark.slow  # a real sshd and sshfs mount


def test_server_side_writes_reach_the_mount_within_the_attribute_cache(network_folder: netfs.NetworkFolder) -> None:
    assert netfs._is_mounted(network_folder.mount_path)
    assert os.listdir(network_folder.mount_path) == []  # the first listing is cached from now on
    started = time.monotonic()
    (network_folder.server_path / "a.json").write_text("{}")
    wait_until(lambda: "a.json" in os.listdir(network_folder.mount_path), timeout=30, what="the new file")
    # Not at once: the listing is cached as NFS caches it (generous bounds for a loaded machine).
    assert time.monotonic() - started > 1.0
    assert (network_folder.mount_path / "a.json").read_text() == "{}"
    (network_folder.mount_path / "b.json").write_text("[]")  # and the mount is writable
    assert (network_folder.server_path / "b.json").read_text() == "[]"


def test_the_file_server_goes_away_and_comes_back(network_folder: netfs.NetworkFolder) -> None:
    (network_folder.server_path / "a.json").write_text("{}")
    network_folder.kill_server()
    assert network_folder.server_pids() == []
    with pytest.raises(OSError):
        (network_folder.mount_path / "a.json").read_text()
    network_folder.start_server()
    assert wait_until(lambda: (network_folder.mount_path / "a.json").read_text() == "{}", timeout=30)


def test_teardown_unmounts_and_stops_everything_even_when_frozen(tmp_path: Path) -> None:
    reason = netfs.unavailable()
    if reason is not None:
        pytest.skip(reason)
    with netfs.mounted(tmp_path / "n") as folder:
        pids = folder.pids()
        assert len(pids) >= 3  # sshfs, its ssh, sshd (and the connection's sshd)
        folder.freeze_server()
    assert not netfs._is_mounted(folder.mount_path)
    assert [pid for pid in pids if _alive(pid)] == []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"  # a zombie has ended
