"""A supervised child process: its own session, its own log file, and gone when its parent is.

Children run in a session of their own, so a Ctrl-C in the terminal reaches the supervisor
alone, which then stops them in order; and each asks the kernel for SIGTERM when the
supervisor dies (PR_SET_PDEATHSIG), so that not even a SIGKILL of the supervisor leaves
orphans. Linux only, like the service's watcher. The signal follows the *thread* that started
the child: start children from a thread that outlives them (the main thread).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    # Runs in the child between fork and exec; kept across exec (taskset, python, haproxy).
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """One process; `start` again after it ended to run it anew (with a fresh log file)."""

    stop_signal = signal.SIGTERM  # what asks this program for a clean stop

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_dir = log_dir
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """This run's log: `<name>.log`, then `<name>.2.log`, ... for later runs."""
        suffix = "" if self.starts <= 1 else f".{self.starts}"
        return self.log_dir / f"{self.name}{suffix}.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running():
            raise RuntimeError(f"{self.name} is already running")
        self.close_log()
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def send(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def kill(self) -> int | None:
        """SIGKILL, as the kernel's OOM killer or a node failure would; reaped at once."""
        self.send(signal.SIGKILL)
        return self.wait(10.0)

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None if it still runs after `timeout` seconds."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 30.0) -> int | None:
        """A clean stop (`stop_signal`), then SIGKILL if it has not exited within `timeout` s."""
        self.send(self.stop_signal)
        return self.finish(timeout)

    def finish(self, timeout: float = 30.0) -> int | None:
        """Wait for an exit already asked for, SIGKILL after `timeout` s. Never signal twice:
        a second SIGTERM can land after the program has put the default handler back, and
        kill it in the middle of its clean stop."""
        status = self.wait(timeout)
        if status is None and self.running():
            self.kill()
            status = self.wait(10.0)
        self.close_log()
        return status

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ClusterError(Exception):
    """A process of the cluster could not start or stopped unexpectedly."""


class Timeout(ClusterError):
    pass


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `condition` until it holds; Timeout after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def environment(drop_prefixes: tuple[str, ...], extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without variables a child must not inherit, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(drop_prefixes)}
    env.update(extra)
    return env
