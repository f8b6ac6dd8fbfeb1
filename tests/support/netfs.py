"""A real network filesystem for tests and benchmarks: a folder served over SFTP by a loopback
OpenSSH server that this module starts, mounted with sshfs (FUSE).

It stands in for the network volumes the service is deployed on (NFS, EFS, Azure Files, CephFS):
files written on the server's side (`server_path`) reach the mount (`mount_path`, the service's
SESSIONS_DIR) only through the protocol, no inotify event crosses it, and the client caches
attributes and names for a few seconds, as NFS does with `acregmin`. The file server can be
killed and restarted (`kill_server`, `start_server`) or frozen (`freeze_server`: the mount then
hangs instead of failing).

How the cache is modelled (all are sshfs options, see sshfs(1)):
- `attr_timeout`, `entry_timeout`: the kernel's FUSE caches of attributes (size, mtime) and of
  name lookups, like NFS's attribute cache (`acregmin`/`acdirmin`, 3 s by default on Linux):
  within it a stat, or a read past the cached end of a file, sees the old state.
- `dcache_timeout`: sshfs's own cache of attributes and directory listings; set to the same,
  or it would hold a listing for its default 20 s and model a much staler server than NFS.
- `negative_timeout=0` (the FUSE default): a name looked up and missing is not remembered, as
  NFS revalidates a missing name when the folder changes.
- `reconnect` with `ServerAliveInterval=1`, `ServerAliveCountMax=3`: a killed server makes the
  next operation fail, a frozen one is given up after ~3 s, and the mount reconnects by itself
  when the server is back, as a hard NFS mount recovers (without hanging for ever).

Usage: `with mounted(tmp) as folder: ...` (the pytest fixture `network_folder` in conftest.py
wraps it). Everything started is killed and the mount removed on exit, even after a failure.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ATTRIBUTE_CACHE_S = 3.0
SSHD = "/usr/sbin/sshd"  # sshd refuses to run by a relative name: it re-executes itself
START_TIMEOUT_S = 20.0


def unavailable() -> str | None:
    """Why a network folder cannot be mounted here, or None. Only a missing FUSE device is a
    reason to skip: missing programs are an installation fault (`.ci/run` installs them)."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine: FUSE mounts (sshfs) are impossible here"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (sshd forks one per connection, and that one a child that
    serves SFTP), found through /proc: they are not in its process group."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stream:
                stat = stream.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    queue = [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as stream:
        for line in stream:
            fields = line.split()
            if len(fields) > 4 and fields[4].replace("\\040", " ") == target:
                return True
    return False


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=30)


@dataclass
class NetworkFolder:
    """One exported folder, its file server and its mount."""

    base: Path
    attr_timeout: float = ATTRIBUTE_CACHE_S
    server_path: Path = field(init=False)  # on the file server's disk: write here as a remote writer
    mount_path: Path = field(init=False)  # the network mount: the service's SESSIONS_DIR
    port: int = field(init=False, default=0)
    sshd: subprocess.Popen[bytes] | None = field(init=False, default=None)
    sshfs: subprocess.Popen[bytes] | None = field(init=False, default=None)
    _frozen: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.server_path = self.base / "export"
        self.mount_path = self.base / "mnt"
        self._keys = self.base / "keys"
        for folder in (self.server_path, self.mount_path, self._keys):
            folder.mkdir(exist_ok=True)

    # --- the file server -----------------------------------------------------------------------

    def _configure(self) -> None:
        keys = self._keys
        for name in ("host", "user"):
            key = keys / name
            if not key.exists():
                _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"netfs-{name}", "-f", str(key)])
        shutil.copyfile(keys / "user.pub", keys / "authorized_keys")
        user = getpass.getuser()
        # StrictModes no: the keys live in a temp folder whose owner and modes sshd would
        # otherwise judge (a clone made with `mktemp -d`, a shared /tmp). internal-sftp: the
        # SFTP server runs inside sshd, whatever the user's shell.
        (keys / "sshd_config").write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {self.port}",
                    f"HostKey {keys / 'host'}",
                    f"PidFile {keys / 'sshd.pid'}",
                    f"AuthorizedKeysFile {keys / 'authorized_keys'}",
                    "StrictModes no",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "PermitRootLogin prohibit-password",
                    f"AllowUsers {user}",
                    "Subsystem sftp internal-sftp",
                    "MaxStartups 100",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        (keys / "ssh_config").write_text(
            "\n".join(
                [
                    "Host *",
                    "  HostName 127.0.0.1",
                    f"  Port {self.port}",
                    f"  User {user}",
                    f"  IdentityFile {keys / 'user'}",
                    "  IdentitiesOnly yes",
                    "  StrictHostKeyChecking no",
                    "  UserKnownHostsFile /dev/null",
                    "  GlobalKnownHostsFile /dev/null",
                    "  BatchMode yes",
                    "  ConnectTimeout 5",
                    "  ServerAliveInterval 1",
                    "  ServerAliveCountMax 3",
                    "  LogLevel ERROR",
                    "",
                ]
            )
        )

    def start_server(self) -> None:
        """Start the file server (again on the same port after `kill_server`)."""
        if self.sshd is not None and self.sshd.poll() is None:
            return
        if os.geteuid() == 0:
            # sshd run by root separates privileges into this folder (Debian's service creates it).
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for attempt in range(5):
            if not self.port or attempt:
                self.port = _free_port()
                self._configure()
            with open(self._keys / "sshd.log", "ab") as log:
                self.sshd = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(self._keys / "sshd_config")],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_listening(self.sshd):
                return
            self._stop_sshd()  # the port was taken meanwhile, or sshd failed: try another
            if attempt == 0 and self.sshfs is not None:
                break  # a restart must keep the port the mount knows
        raise RuntimeError("sshd did not start:\n" + (self._keys / "sshd.log").read_text(errors="replace")[-2000:])

    def _wait_listening(self, process: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    if sock.recv(8).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def server_pids(self) -> list[int]:
        if self.sshd is None or self.sshd.poll() is not None:
            return []
        return [self.sshd.pid, *_descendants(self.sshd.pid)]

    def _stop_sshd(self) -> None:
        if self.sshd is None:
            return
        pids = self.server_pids()
        _signal(pids, signal.SIGCONT)
        _signal(pids, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.sshd.wait(10)
        self.sshd = None
        self._frozen = False

    def kill_server(self) -> None:
        """The file server goes away: sshd and every connection it serves are killed at once
        (the mount's next operations fail until `start_server`)."""
        self._stop_sshd()

    def freeze_server(self) -> None:
        """The file server stops answering but keeps its connections (SIGSTOP): operations on
        the mount hang until sshfs gives the connection up (ServerAliveInterval)."""
        _signal(self.server_pids(), signal.SIGSTOP)
        self._frozen = True

    def thaw_server(self) -> None:
        _signal(self.server_pids(), signal.SIGCONT)
        self._frozen = False

    # --- the mount -----------------------------------------------------------------------------------

    def mount(self) -> None:
        timeout = f"{self.attr_timeout:g}"
        options = ",".join(
            [
                "reconnect",
                "ServerAliveInterval=1",
                "ServerAliveCountMax=3",
                f"attr_timeout={timeout}",
                f"entry_timeout={timeout}",
                "negative_timeout=0",
                f"dcache_timeout={timeout}",
            ]
        )
        with open(self.base / "sshfs.log", "ab") as log:
            self.sshfs = subprocess.Popen(
                [
                    "sshfs",
                    "-f",  # in the foreground: this process is the FUSE client, ours to kill
                    "-F",
                    str(self._keys / "ssh_config"),
                    "-o",
                    options,
                    f"netfs:{self.server_path}",
                    str(self.mount_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _is_mounted(self.mount_path):
            if self.sshfs.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("sshfs did not mount:\n" + (self.base / "sshfs.log").read_text(errors="replace"))
            time.sleep(0.05)

    def client_pids(self) -> list[int]:
        """The FUSE client: sshfs and the ssh it talks through."""
        if self.sshfs is None or self.sshfs.poll() is not None:
            return []
        return [self.sshfs.pid, *_descendants(self.sshfs.pid)]

    def pids(self) -> list[int]:
        """Every process of the network volume (client and server), e.g. to measure its CPU."""
        return [*self.client_pids(), *self.server_pids()]

    def unmount(self) -> None:
        if self._frozen:
            self.thaw_server()
        if _is_mounted(self.mount_path):
            # Lazy: a process still inside the mount (a hung reader) must not keep it.
            command = ["fusermount3", "-u", "-z", str(self.mount_path)]
            if shutil.which("fusermount3") is None:
                command = ["umount", "-l", str(self.mount_path)]
            subprocess.run(command, capture_output=True, timeout=30)
        if self.sshfs is not None:
            pids = self.client_pids()
            _signal(pids, signal.SIGTERM)
            try:
                self.sshfs.wait(5)
            except subprocess.TimeoutExpired:
                _signal(pids, signal.SIGKILL)
                self.sshfs.wait(5)
            self.sshfs = None

    def close(self) -> None:
        try:
            self.unmount()
        finally:
            self._stop_sshd()


@contextlib.contextmanager
def mounted(base: Path, attr_timeout: float = ATTRIBUTE_CACHE_S) -> Iterator[NetworkFolder]:
    """A started file server and its mount under `base`; all of it stopped on exit."""
    folder = NetworkFolder(base, attr_timeout)
    try:
        folder.start_server()
        folder.mount()
        yield folder
    finally:
        folder.close()
