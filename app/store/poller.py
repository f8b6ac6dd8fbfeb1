"""Polling whose cost follows what changes, not what exists (docs/network-volumes.md).

In a real folder most sessions are finished and never change again. Each polling period this
decides which job ids the reconciler should look at again, without a stat per file:

- the folder itself is stat-ed: a creation, a rename or a deletion changes its modification
  time, and only then is it listed (names and the inode numbers the listing gives, no stat
  per file): new names, vanished names and names whose inode changed (a file renamed over
  another) are looked at;
- the "hot" sessions are stat-ed one by one: unfinished ones, files that are invalid or were
  read too soon after a write to trust their timestamps ("racy"), and sessions that changed
  recently. On a local disk every period (a stat is a few microseconds); on a network mount
  each stat is a round trip to the file server, so all of them only in a period where the
  folder changed (a temp file and a rename, the way careful writers save, changes the folder;
  a listing without inode numbers, sshfs's, cannot tell which file was renamed over), and
  otherwise a slice per period, so that each is looked at once per HOT_CYCLE_S: a rewrite in
  place shows there. Racy files are looked at every period, wherever they are;
- everything else (finished, long unchanged sessions) is left to the full rescan every
  SESSIONS_RESCAN_INTERVAL_S, which reads a listing and stats in bulk (on a network mount
  one listing fetches every file's attributes at once, far cheaper than one request each).

On a network filesystem the stats go past the client's attribute cache (fileversion's forced
stat), so a change shows within the polling period instead of the cache's lifetime, where the
filesystem allows it.

It runs in the reconciler thread and reads the store's reconciler-side state; it never writes
the store. Its blocking folder operations (the folder's stat, a listing, the hot files' stats)
go through `run_io`: on a network filesystem they take up to seconds, and the reconciler runs
them in a thread of its own so as to go on applying what writers announce meanwhile.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from app.store import fileversion, sessionfile
from app.store.fileversion import signature
from app.store.sessionfile import job_id_for
from app.store.store import SessionStore

# A finished session that changed stays hot this long: writers often touch a session again
# shortly after finishing it (a result, a late status).
HOT_WINDOW_S = 600.0
# On a network mount, a hot session is looked at at least this often while the folder does not
# change (a rewrite in place): 2,000 unfinished sessions cost ~35 stats a second, each a round
# trip to the file server, instead of 2,000 a period. Full rescans at least this often (the
# default SESSIONS_RESCAN_INTERVAL_S) look at them anyway: no extra stats then.
HOT_CYCLE_S = 60.0
# On a network mount, after a period that found the folder changed, the hot files are stat-ed
# every period for this long: a renamed file's attributes may still be cached (sshfs keeps its
# own 3-4 s, past a forced stat) when the folder's change shows, and show on a later period.
SWEEP_AFTER_CHANGE_S = 5.0
# Where stats run in several threads, a probe of fewer files than this stays in one.
PARALLEL_FROM = 64
# A listing of the folder may take at most this share of the time (the rest of the cost on a
# network mount): after one that took 1 s, the next waits at least 1 / share seconds.
LISTING_SHARE = 0.25
# Inode numbers that mean "unknown" (FUSE filesystems that do not pass them through, sshfs).
_UNKNOWN_INODES = frozenset({0, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF})

T = TypeVar("T")


class RunIO(Protocol):
    """Runs a blocking folder operation and returns its result (or raises its error)."""

    def __call__(self, work: Callable[[], T], /) -> T: ...


def inline(work: Callable[[], T], /) -> T:
    return work()


def list_folder(root: Path) -> dict[str, int]:
    """job id -> inode number of every session file name, without a stat per entry."""
    found: dict[str, int] = {}
    with os.scandir(root) as entries:
        for entry in entries:
            job_id = job_id_for(entry.name)
            if job_id is not None:
                found[job_id] = entry.inode()
    return found


def folder_key(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_mtime_ns, st.st_ctime_ns


@dataclass
class PollStats:
    periods: int = 0
    probes: int = 0  # stats of hot files
    listings: int = 0  # listings of the folder (without a stat per file)


class Poller:
    def __init__(
        self,
        root: Path,
        store: SessionStore,
        period_s: float,
        *,
        forced: bool,
        run_io: RunIO = inline,
        pause: Callable[[], object] = lambda: None,
        hot_cycle_s: float | None = HOT_CYCLE_S,
        stat_threads: int = 1,
        thread_initializer: Callable[[], object] | None = None,
    ) -> None:
        self.root = root
        self.store = store
        self.period_s = period_s
        self._io = run_io
        # Called between two hot files' stats: waits while more urgent work uses the folder.
        self._pause = pause
        # On a network filesystem: stats past the attribute cache. Locally: plain stats.
        self.stat: Callable[[str], os.stat_result] = fileversion.forced_stat if forced else os.stat
        self.stats = PollStats()
        self.hot: set[str] = set()
        self._cooling: dict[str, float] = {}  # finished sessions hot until this monotonic time
        self._names: dict[str, int] | None = None  # the last listing; None before the first
        self._folder: tuple[int, int, int] | None = None
        self._folder_racy = False
        self._listing_wanted = False
        self._next_listing = 0.0
        # On a network mount: hot files every period only when the folder changed; otherwise
        # a slice of this rotation per period (refilled from the hot set when it runs out), so
        # that each is looked at once per `hot_cycle_s`; None where full rescans come at least
        # that often (they look at every file, the hot ones too): no slices then.
        self.every_period = not forced
        self._sweep_until = 0.0  # monotonic: hot files every period until then (a change)
        self.hot_cycle_s = hot_cycle_s
        self._rotation: list[str] = []
        # Several stats in flight at once (a network mount): threads of the poller's own.
        self._stat_threads: ThreadPoolExecutor | None = None
        self._stat_thread_count = stat_threads
        if stat_threads > 1:
            self._stat_threads = ThreadPoolExecutor(
                stat_threads, thread_name_prefix="sessions-poll-stat", initializer=thread_initializer
            )

    def close(self) -> None:
        if self._stat_threads is not None:
            self._stat_threads.shutdown(wait=False, cancel_futures=True)

    # --- what the reconciler tells ---------------------------------------------------------------

    def seed(self) -> None:
        """After the warm-up: every session that is not settled is hot."""
        self.hot = self.store.unsettled_ids()

    def applied(self, job_id: str) -> None:
        """A change to `job_id` was applied: keep it hot (while unfinished, or for a while)."""
        status = self.store.status(job_id)
        if status is None and not self.store.is_invalid(job_id):
            self.hot.discard(job_id)  # deleted
            self._cooling.pop(job_id, None)
            return
        self.hot.add(job_id)
        if status in self.store.finished_statuses and not self.store.is_invalid(job_id):
            self._cooling[job_id] = time.monotonic() + HOT_WINDOW_S
        else:
            self._cooling.pop(job_id, None)

    def listed(self, names: dict[str, int], folder: tuple[int, int, int] | None) -> None:
        """A full listing (the warm-up's or a rescan's), and the folder's key from before it."""
        self._names = names
        if folder is not None:
            self._folder = folder

    def probe_folder(self) -> tuple[int, int, int]:
        """The folder's key now (raises OSError when it cannot be reached)."""
        return folder_key(self.stat(str(self.root)))

    # --- one period ---------------------------------------------------------------------------------

    def step(self) -> tuple[set[str], bool]:
        """The job ids to look at again this period, and whether the folder itself was replaced
        (then everything is). Raises OSError when the folder cannot be stat-ed or listed (the
        server is gone): nothing is decided then."""
        self.stats.periods += 1
        now = time.monotonic()
        wanted: set[str] = set()
        st = self._io(lambda: self.stat(str(self.root)))
        key = folder_key(st)
        if self._folder is not None and key[0] != self._folder[0]:
            self._folder = key
            return wanted, True
        folder_changed = key != self._folder or self._folder_racy
        if folder_changed:
            self._listing_wanted = True
            # Changed within the same timestamp tick as the listing could have seen: list
            # again until its timestamp is old enough to be trusted.
            self._folder_racy = fileversion.is_racy(st)
            self._folder = key
        if self._listing_wanted and now >= self._next_listing:
            wanted |= self._relist()
        self._cool(now)
        if folder_changed:
            self._sweep_until = now + SWEEP_AFTER_CHANGE_S
        if self.every_period or now < self._sweep_until:
            wanted |= self._probe(self.hot)
            self._rotation = []  # all just looked at: the cycle starts again
        elif self.hot_cycle_s is not None:
            wanted |= self._probe(self._slice(self.hot_cycle_s))
        elif self.store.has_racy():
            wanted |= self._probe(set())  # the racy files alone
        return wanted, False

    def _slice(self, cycle_s: float) -> set[str]:
        """The hot files whose turn it is this period: each once per `cycle_s`."""
        hot = self.hot
        count = math.ceil(len(hot) * self.period_s / cycle_s)
        turn: set[str] = set()
        while len(turn) < count and hot:
            if not self._rotation:
                self._rotation = sorted(hot, reverse=True)  # popped from the end: in order
            job_id = self._rotation.pop()
            if job_id in hot:
                turn.add(job_id)
            if not self._rotation:
                break  # one round per period at most
        return turn

    def _relist(self) -> set[str]:
        def timed_listing() -> tuple[dict[str, int], float]:
            started = time.monotonic()
            return list_folder(self.root), time.monotonic() - started

        names, took = self._io(timed_listing)
        self.stats.listings += 1
        self._listing_wanted = False
        self._next_listing = time.monotonic() + max(self.period_s, took / LISTING_SHARE)
        previous, self._names = self._names, names
        if previous is None:
            return set(names)
        wanted = names.keys() ^ previous.keys()
        for job_id, inode in names.items():
            before = previous.get(job_id)
            if before is not None and before != inode and inode not in _UNKNOWN_INODES:
                wanted.add(job_id)  # another file renamed over it
        return wanted

    def _cool(self, now: float) -> None:
        if not self._cooling:
            return
        expired = [job_id for job_id, until in self._cooling.items() if until <= now]
        for job_id in expired:
            del self._cooling[job_id]
            if not self.store.is_racy(job_id) and not self.store.is_invalid(job_id):
                self.hot.discard(job_id)

    def _probe(self, chosen: set[str]) -> set[str]:
        """Stat `chosen` and the racy files; the job ids whose file differs from the store."""
        store, stat, root, pause = self.store, self.stat, str(self.root), self._pause
        # A copy: the reconciler may apply announced changes (and so change the hot set) while
        # the stats run.
        hot = list(chosen | store.racy_ids() if store.has_racy() else chosen)

        def probe_part(part: list[str]) -> list[os.stat_result | None]:
            found: list[os.stat_result | None] = []
            for job_id in part:
                pause()
                try:
                    found.append(stat(f"{root}/{job_id}{sessionfile.SUFFIX}"))
                except OSError:
                    found.append(None)  # gone, or unreadable: the reconciler says which
            return found

        def probe() -> list[os.stat_result | None]:
            threads = self._stat_threads
            if threads is None or len(hot) < PARALLEL_FROM:
                return probe_part(hot)
            # Round trips to the file server overlap (a sweep of 2,000 hot files after the
            # folder changed, on sshfs: 0.55-0.8 s one at a time, 0.17-0.2 s and less CPU with
            # six threads).
            found: list[os.stat_result | None] = [None] * len(hot)
            count = self._stat_thread_count
            for index, part in enumerate(threads.map(probe_part, [hot[start::count] for start in range(count)])):
                found[index::count] = part
            return found

        wanted: set[str] = set()
        for job_id, st in zip(hot, self._io(probe), strict=True):
            # Compared with the store after the stats: a version applied meanwhile is not read
            # again, and one older than the stat is.
            if st is None or signature(st) != store.signature(job_id) or store.is_racy(job_id):
                wanted.add(job_id)
        self.stats.probes += len(hot)
        return wanted
