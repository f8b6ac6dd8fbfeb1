"""The reconciler: one worker thread that keeps the store equal to the folder.

It warms the store at start-up, then applies what the watcher (or the poller, where native
events cannot be trusted) reports and, periodically, a rescan that compares the folder with the
store (the safety net for whatever events miss). Being the store's only writer, it never races
itself: a slow read cannot overwrite a newer one. Other threads only read files for it (the
warm-up's readers) or tell it what to look at (`pending`).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

from app.errors import InvalidSessionFile, TransientReadError
from app.settings import Settings
from app.store import fileversion, sessionfile, warmstart
from app.store.announcements import AnnouncementReader
from app.store.fileversion import Version, signature
from app.store.pending import PendingChanges
from app.store.poller import HOT_CYCLE_S, Poller, folder_key, list_folder
from app.store.poller import inline as poller_inline
from app.store.sessionfile import LoadedFile, job_id_for
from app.store.store import Change, SessionStore
from app.store.watcher import NativeWatcher
from app.store.watchmode import WatchPlan, events_trusted, plan

logger = logging.getLogger("app.reconciler")

BACKGROUND_NICENESS = 10
WARM_BATCH = 256  # files applied per lock acquisition during the warm-up
RETRY_DELAY_S = 0.5  # after a transient read error (out of file descriptors, memory)
ANNOUNCE_EVERY = 256  # changes: a long rescan hands its changes to the streams as it goes
WATCHER_START_TIMEOUT_S = 5.0
# The warm-up's readers. On a network filesystem each file costs round trips, not CPU: read
# many at once. On a local disk reading is CPU-bound under one interpreter lock: one reader,
# this thread, keeps the event loop's share of the CPU (and /livez) as it was.
NETWORK_WARM_THREADS = 32
WARM_CHUNK = 64  # files per task handed to a reader
LIST_RETRY_MAX_S = 10.0  # the warm-up retries a folder it cannot list, backing off up to this
# A folder operation taking longer than this means the file server is not answering.
FOLDER_SLOW_S = 5.0
# While the poller's folder operations run in their thread, this thread applies the job ids
# that arrive, and looks at least this often whether it was told to stop.
STOP_CHECK_S = 1.0

# A rescan on a network mount stats with this many threads, a chunk of names at a time; it
# lists the folder again when the median stat of a chunk is SLOW_STATS times the lowest median
# of the pass (the listing's attributes are no longer cached), no sooner than RELIST_GAP_S after
# the last listing: a client holds a listing's attributes at least 3 s (NFS's acregmin) and
# sshfs, the stand-in of the benchmarks, 3-4 s (its cache expires on whole seconds).
SCAN_STAT_THREADS = 6
SCAN_CHUNK = 3072
SLOW_STATS = 4.0
RELIST_GAP_S = 4.0

# A rescan applied here looks for announced changes every so many files it compares.
SERVE_EVERY = 1024

# The warm-start file (app.store.warmstart) is written again when more than this share of the
# folder's files were not in it or had changed: its cost (one write of every session) follows
# what changed, and a folder that barely changes is not rewritten at every start.
WARM_START_STALE_SHARE = 0.05
# After a warm-up that took sessions from the warm-start file, full rescans this long after
# it is done, whatever SESSIONS_RESCAN_INTERVAL_S says: a file changed in the seconds before the
# start may show its old attributes while a FUSE daemon's own cache holds them (no forced stat
# passes it: sshfs's is 3-4 s as the benchmarks mount it, 20 s by default), and so match its
# old version in the file. Past that cache, a rescan sees the change.
WARM_START_RECHECKS_S = (5.0, 30.0)
# Stats of the warm start handed to a thread at a time: the documents of one batch are built
# while the next is stat-ed.
WARM_START_STAT_BATCH = 512


class WarmStart(NamedTuple):
    """What the warm-up takes from the warm-start file, and what it reads from the folder."""

    taken: list[LoadedFile]
    to_read: Collection[str]
    stale: int  # files the warm-start file did not hold as they are now


T = TypeVar("T")


class _Stopped(Exception):
    """The service stops: a warm-start file being written is abandoned."""


def _always() -> bool:
    return True


@dataclass
class ReconcilerStats:
    warmup_seconds: float | None = None
    rescans: int = 0
    rescan_seconds: float = 0.0
    changes: dict[str, int] = field(default_factory=dict)
    transient_errors: int = 0
    folder_failures: int = 0
    warm_start_sessions: int = 0  # sessions the warm-up took from the warm-start file
    warm_start_writes: dict[str, int] = field(default_factory=dict)  # by outcome


def _lower_priority() -> None:
    """Let the event loop win the CPU over this thread: on a busy core the scheduler then runs
    the loop as soon as it is ready, which keeps probes and requests fast during a warm-up or a
    rescan. (Linux schedules threads as tasks, so this lowers this thread alone.)"""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: run at normal priority
        pass


class Reconciler:
    def __init__(self, store: SessionStore, settings: Settings, watch: WatchPlan | None = None) -> None:
        self.store = store
        self.settings = settings
        self.root: Path = settings.sessions_dir
        # The mode this process runs in (SESSIONS_WATCH=auto decides by the folder's filesystem).
        self.watch = watch if watch is not None else plan(settings.watch, settings.sessions_dir)
        self.pending = PendingChanges()
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.stats = ReconcilerStats()
        self.watcher: NativeWatcher | None = None
        if self.watch.mode == "native":
            self.watcher = NativeWatcher(self.root, self.pending, self.stop_event)
        # Writers' announcements (docs/network-volumes.md) are read where the folder is polled:
        # there they are the only prompt news of a change; native events already report every
        # write that announcements would.
        self.announcements: AnnouncementReader | None = None
        if self.watch.mode == "poll":
            self.announcements = AnnouncementReader(
                self.root, self.pending, self.stop_event, direct=not events_trusted(self.watch.filesystem)
            )
        self._retry: set[str] = set()
        # On a network filesystem: metadata past the client's attribute cache, reads in parallel.
        self.network = not events_trusted(self.watch.filesystem) and self.watch.filesystem != "unknown"
        # On a network filesystem the warm-up starts from the file a replica left (app.store.warmstart).
        self.warm_start = self.network and settings.warm_start == "auto"
        self.warm_start_dir = settings.warm_start_dir or self.root / warmstart.FOLDER
        self._warm_start_writer: threading.Thread | None = None
        self._rechecks: list[float] = []  # rescans soon after a warm start (monotonic times)
        self._rescan_again = False  # a recheck came due while a scan ran: another one after it
        self.poller: Poller | None = None
        # On a network filesystem a poll's folder operations (a listing, a stat per hot file:
        # each a round trip) take up to seconds: they run in a thread of their own while this
        # thread goes on applying what writers announce (`_meanwhile`).
        self._poll_io: ThreadPoolExecutor | None = None
        # Clear while this thread applies announced changes during a poll's or a rescan's folder
        # operations: those stop between two files meanwhile. On a network mount every request
        # goes through one client and one connection to the file server, and an announced
        # file's read would otherwise queue behind thousands of stats.
        self._folder_free = threading.Event()
        self._folder_free.set()
        if self.watch.mode != "off":  # also what the native mode falls back on while it is down
            if self.network:
                self._poll_io = ThreadPoolExecutor(1, thread_name_prefix="sessions-poll", initializer=_lower_priority)
            self.poller = Poller(
                self.root,
                store,
                settings.poll_interval_s,
                forced=self.network,
                run_io=self._meanwhile if self._poll_io is not None else poller_inline,
                pause=self._wait_folder_free,
                hot_cycle_s=None if 0 < settings.rescan_interval_s <= HOT_CYCLE_S else HOT_CYCLE_S,
                stat_threads=SCAN_STAT_THREADS if self.network else 1,
                thread_initializer=_lower_priority,
            )
        # What is true of the folder, for readiness, metrics and logs: reachable or not (and
        # why), and since when a folder operation has been running (a hung server).
        self.folder_error: str | None = None
        self._busy_since: float | None = None
        # On a network filesystem a full rescan's listing and stats take seconds: they run in a
        # thread of their own, which only reads the folder, so that polling goes on meanwhile;
        # this thread applies what it found.
        self._scanner: ThreadPoolExecutor | None = None
        self._scanning: Future[tuple[tuple[int, int, int] | None, dict[str, int], dict[str, int]]] | None = None
        self._scan_started = 0.0
        self._scan_stats: ThreadPoolExecutor | None = None
        if self.network and self.watch.mode != "off":
            self._scanner = ThreadPoolExecutor(1, thread_name_prefix="sessions-scan", initializer=_lower_priority)
            self._scan_stats = ThreadPoolExecutor(
                SCAN_STAT_THREADS, thread_name_prefix="sessions-scan-stat", initializer=_lower_priority
            )
        self._thread = threading.Thread(target=self._run, name="sessions-reconciler", daemon=True)
        # Hooks for metrics: every applied change, and the lag from a file's modification to
        # the moment its new version is served.
        self.on_change: Callable[[Change, str], None] = lambda change, job_id: None
        self.on_reload_lag: Callable[[float], None] = lambda seconds: None
        # Called once per batch of applied changes (not once per change): the change hub then
        # schedules one delivery on the event loop.
        self.on_applied: Callable[[], None] = lambda: None
        self._unannounced = 0
        store.on_suspect = lambda job_id: self.pending.add((job_id,))

    def start(self) -> None:
        if self.watcher is not None:
            self.watcher.start()
        if self.announcements is not None:
            self.announcements.start()
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.pending.wake()
        deadline = time.monotonic() + timeout
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self.watcher is not None:
            self.watcher.join(max(0.0, deadline - time.monotonic()))
        if self.announcements is not None:
            self.announcements.join(max(0.0, deadline - time.monotonic()))
        writer = self._warm_start_writer
        if writer is not None and writer.ident is not None:  # not started if stopped before ready
            writer.join(max(0.0, deadline - time.monotonic()))
        for executor in (self._scanner, self._scan_stats, self._poll_io):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
        if self.poller is not None:
            self.poller.close()

    # --- what is true of the folder ----------------------------------------------------------------

    def folder_state(self) -> str:
        """The folder's state: "ok", "unreachable" (the last operation failed) or "not answering" (one has been
        running for FOLDER_SLOW_S): read from any thread."""
        busy_since = self._busy_since
        if busy_since is not None and time.monotonic() - busy_since > FOLDER_SLOW_S:
            return "not answering"
        return "ok" if self.folder_error is None else "unreachable"

    def _folder_failed(self, exc: OSError) -> None:
        if self.folder_error is None:
            self.stats.folder_failures += 1
            logger.error(
                "cannot list the sessions folder; serving what is in memory",
                extra={"folder": str(self.root), "error": str(exc)},
            )
        self.folder_error = exc.strerror or str(exc)

    def _folder_answered(self) -> bool:
        """Record that the folder answered; True if it had not been (time to catch up)."""
        if self.folder_error is None:
            return False
        logger.warning("sessions folder is back", extra={"folder": str(self.root)})
        self.folder_error = None
        return True

    # --- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        _lower_priority()
        if self.watcher is not None:
            self.watcher.settled.wait(WATCHER_START_TIMEOUT_S)
        if self.announcements is not None:
            self.announcements.settled.wait(WATCHER_START_TIMEOUT_S)
        self._warm_up()
        if self.stop_event.is_set():
            return
        self.ready.set()
        self.on_applied()  # the history begins: streams can open
        if self._warm_start_writer is not None:
            self._warm_start_writer.start()
        rescan_interval = self.settings.rescan_interval_s
        next_rescan = self._next_rescan(rescan_interval)
        next_poll: float | None = None
        while not self.stop_event.is_set():
            now = time.monotonic()
            if self._polling():
                next_poll = now if next_poll is None else next_poll
            else:
                next_poll = None
            due = [moment for moment in (next_rescan, next_poll) if moment is not None]
            timeout = max(0.0, min(due) - now) if due else None
            if self._retry:
                timeout = RETRY_DELAY_S if timeout is None else min(timeout, RETRY_DELAY_S)
            job_ids, rescan = self.pending.take(timeout)
            if self.stop_event.is_set():
                return
            self._busy_since = time.monotonic()  # a hung read below shows as "not answering"
            try:
                if self._retry:
                    job_ids |= self._retry
                    self._retry = set()
                self._apply_first(job_ids)  # a rescan's scan, if one runs, waits meanwhile
                self._finish_rescan()
                now = time.monotonic()
                if rescan or (next_rescan is not None and now >= next_rescan):
                    self._start_rescan(again=bool(self._rechecks) and self._rechecks[0] <= now)
                    next_rescan = self._next_rescan(rescan_interval)
                elif next_poll is not None and now >= next_poll:
                    self._poll()
                    next_poll = max(now + self.settings.poll_interval_s, time.monotonic())
            except Exception:  # never let one bad surprise stop the store from updating
                logger.exception("reconciler error; rescanning")
                self.pending.request_rescan()
                self.stop_event.wait(1.0)
            finally:
                self._busy_since = None
                self._announce()

    def _next_rescan(self, interval: float) -> float | None:
        """When the next rescan is due: the interval's, or a recheck after a warm start's."""
        now = time.monotonic()
        self._rechecks = [moment for moment in self._rechecks if moment > now]
        due = self._rechecks[:1] + ([now + interval] if interval else [])
        return min(due) if due else None

    def _polling(self) -> bool:
        if self.poller is None:
            return False
        if self.watch.mode == "poll":
            return True
        return self.watcher is not None and not self.watcher.healthy.is_set()  # events are down

    def _poll(self) -> None:
        assert self.poller is not None
        try:
            job_ids, replaced = self.poller.step()
        except OSError as exc:
            self._folder_failed(exc)
            return
        if self._folder_answered() or replaced:
            self._start_rescan()  # catch up on whatever changed while it could not be seen
            return
        for job_id in job_ids:
            self._reconcile_one(job_id)
            self._serve_announced()

    def _meanwhile(self, work: Callable[[], T]) -> T:
        """Run one of the poller's folder operations in the poll thread and, until it is done,
        apply the job ids that arrive (announced by writers): they would otherwise wait behind
        a listing or the hot files' stats. Applying a change in between is safe: the poller
        compares what it found with the store after its operation."""
        assert self._poll_io is not None
        running = self._poll_io.submit(work)
        running.add_done_callback(lambda _: self.pending.nudge())
        while not running.done() and not self.stop_event.is_set():
            job_ids = self.pending.take_ids(running.done, STOP_CHECK_S)
            if job_ids:
                self._apply_first(job_ids)
        return running.result()

    def _apply_first(self, job_ids: set[str]) -> None:
        """Reconcile `job_ids` while the poll's and the rescan's folder operations wait."""
        self._folder_free.clear()
        try:
            for job_id in job_ids:
                self._reconcile_one(job_id)
        finally:
            self._folder_free.set()
        self._announce()  # to the streams now, not when the poll is done

    def _serve_announced(self) -> None:
        """Between two steps of a long pass in this thread: apply what was announced meanwhile."""
        job_ids = self.pending.take_ids(_always, 0.0)
        if job_ids:
            self._apply_first(job_ids)

    def _wait_folder_free(self) -> None:
        """In the poll's or the scanner's thread, between two files: wait while announced
        changes are applied (never for long: a few reads)."""
        if not self._folder_free.is_set():
            self._folder_free.wait(FOLDER_SLOW_S)

    # --- warm-up -----------------------------------------------------------------------------------

    def _warm_up(self) -> None:
        # Tens of thousands of new long-lived objects would trigger full collections that find
        # no garbage; after the warm-up they are frozen out of later collections, which keeps
        # the event loop's GC pauses short.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._load_everything()
        finally:
            if collecting:
                gc.enable()
            gc.freeze()

    def _load_everything(self) -> None:
        started = time.monotonic()
        # The warm-start file's own version before it is read: whether another replica writes
        # one meanwhile is told by it, on the file server's clock alone.
        seen = warmstart.current_version(self.warm_start_dir) if self.warm_start else None
        reading = self._read_warm_start() if self.warm_start else None
        listing = self._list_until_listed()
        if listing is None:
            return  # stopped
        job_ids, folder = listing
        start = self._start_from_warm_start(reading, job_ids)
        taken_count = len(start.taken)
        reading = None  # the file's records not taken: not kept while the rest is read
        # The version of every file read that no later write can share: what the next
        # warm-start file may hold (with the documents the cache keeps).
        versions: dict[str, Version] = {}
        batch: list[LoadedFile] = []
        for loaded in self._warm_start_then_read(start.taken, start.to_read):
            if self.warm_start and not loaded.racy:
                versions[loaded.document.job_id] = loaded.version
            batch.append(loaded)
            if len(batch) == WARM_BATCH:
                self.store.warm(batch)
                batch = []
                if self.stop_event.is_set():
                    return
        if self.stop_event.is_set():
            return
        self.store.warm(batch)
        self.store.finish_warm_up()
        if self.poller is not None:
            self.poller.listed(job_ids, folder)
            self.poller.seed()
        self.stats.warmup_seconds = time.monotonic() - started
        self.stats.warm_start_sessions = taken_count
        if taken_count:
            done = time.monotonic()
            self._rechecks = [done + after for after in WARM_START_RECHECKS_S]
        logger.info(
            "warm-up done",
            extra={
                "sessions": self.store.session_count(),
                "files": len(job_ids),
                "from_warm_start": taken_count,
                "seconds": round(self.stats.warmup_seconds, 3),
            },
        )
        if self.warm_start and start.stale > WARM_START_STALE_SHARE * len(job_ids):
            # Only what the cache holds: memory stays bounded by the cache's limits, and what
            # it does not hold the next replica reads from the folder. (Nothing has changed
            # since these versions were read: this thread is the store's only writer.) Written
            # once the service is ready (`_run`).
            records = [
                (job_id, version, document.body)
                for job_id, version in versions.items()
                if (document := self.store.current_document(job_id)) is not None
            ]
            self._warm_start_writer = threading.Thread(
                target=self._write_warm_start, args=(records, seen), name="sessions-warm-start", daemon=True
            )

    def _warm_start_then_read(self, taken: list[LoadedFile], to_read: Collection[str]) -> Iterator[LoadedFile]:
        """The sessions taken from the warm-start file, then every other file, read; a file that
        is not a valid session is applied here. (Taken ones leave the list as they go: what the
        cache does not keep of them is not held meanwhile.)"""
        while taken:
            yield taken.pop()
        for job_id, outcome in self._read_many(to_read):
            if isinstance(outcome, BaseException):
                self._settle(job_id, outcome)
            else:
                yield outcome

    # --- the warm-start file (app.store.warmstart) ---------------------------------------------------

    def _read_warm_start(self) -> Future[warmstart.Contents]:
        """Start reading the warm-start file in a thread of its own, while the folder is listed:
        a daemon thread, which a read hung on a dead file server cannot keep the process for."""
        settings = self.settings
        limits = warmstart.Limits(settings.max_file_bytes, settings.cache_max_entries, settings.cache_max_bytes)
        reading: Future[warmstart.Contents] = Future()

        def read() -> None:
            _lower_priority()
            try:
                reading.set_result(warmstart.read(self.warm_start_dir, limits))
            except BaseException as exc:
                reading.set_exception(exc)

        threading.Thread(target=read, name="sessions-warm-start-read", daemon=True).start()
        return reading

    def _warm_start_contents(self, reading: Future[warmstart.Contents]) -> warmstart.Contents | None:
        while not reading.done():  # a stop does not wait for the read
            if self.stop_event.wait(STOP_CHECK_S / 10):
                return None
        try:
            return reading.result()
        except FileNotFoundError:
            logger.info("no warm-start file: reading every session file", extra={"folder": str(self.root)})
        except Exception as exc:  # unreadable, not whole (WarmStartError), or a surprise: never trusted
            logger.warning(
                "cannot use the warm-start file: reading every session file",
                extra={"path": str(warmstart.path(self.warm_start_dir)), "error": str(exc) or type(exc).__name__},
            )
        return None

    def _start_from_warm_start(self, reading: Future[warmstart.Contents] | None, job_ids: dict[str, int]) -> WarmStart:
        """What to take from the warm-start file (nothing when there is none, it cannot be used
        or taking from it fails: then every file is read, as without it)."""
        everything = WarmStart([], job_ids, len(job_ids))
        if reading is None:
            return everything
        contents = self._warm_start_contents(reading)
        if contents is None:
            return everything
        try:
            return self._take_from_warm_start(job_ids, contents.records)
        except Exception:  # the server gone between the listing and the stats, or a surprise
            logger.exception("cannot start from the warm-start file: reading every session file")
            return everything

    def _take_from_warm_start(self, job_ids: dict[str, int], records: dict[str, warmstart.Record]) -> WarmStart:
        """The sessions whose file has the version the warm-start file holds. The files are
        stat-ed past the client's attribute cache, SCAN_STAT_THREADS at once (round trips: the
        threads mostly wait); the documents are built here, in one thread, as a warm-up from the
        folder builds them, which keeps the event loop's share of the CPU."""
        known = [job_id for job_id in job_ids if job_id in records]
        to_read = [job_id for job_id in job_ids if job_id not in records]
        stale = len(to_read) + sum(1 for job_id in records if job_id not in job_ids)
        taken: list[LoadedFile] = []
        finished = self.store.finished_statuses
        batches = [
            known[start : start + WARM_START_STAT_BATCH] for start in range(0, len(known), WARM_START_STAT_BATCH)
        ]
        folder = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with ThreadPoolExecutor(
                SCAN_STAT_THREADS, thread_name_prefix="sessions-warm-start", initializer=_lower_priority
            ) as pool:
                for unchanged, changed in pool.map(
                    self._unchanged, batches, [records] * len(batches), [folder] * len(batches)
                ):
                    to_read += changed
                    stale += len(changed)
                    for job_id, st in unchanged:
                        try:
                            document, summary = sessionfile.build(job_id, records[job_id].body, st.st_mtime_ns)
                        except InvalidSessionFile:
                            to_read.append(job_id)
                            continue
                        # An unfinished session is read from the folder whatever its version: it
                        # is what writers write to now, and a write of the last seconds may not
                        # show in the attributes yet.
                        if summary.status in finished:
                            taken.append(LoadedFile(document, summary, signature(st), False, fileversion.version(st)))
                        else:
                            to_read.append(job_id)
        finally:
            os.close(folder)
        return WarmStart(taken, to_read, stale)

    def _unchanged(
        self, batch: list[str], records: dict[str, warmstart.Record], folder: int
    ) -> tuple[list[tuple[str, os.stat_result]], list[str]]:
        """In one of the warm start's threads: of `batch`, the files whose version is the one
        `records` holds (with their metadata), and the job ids of the others (changed, gone,
        not a plain file now, or too new to trust)."""
        unchanged: list[tuple[str, os.stat_result]] = []
        changed: list[str] = []
        for job_id in batch:
            if self.stop_event.is_set():
                changed.append(job_id)
                continue
            try:
                st = fileversion.forced_lstat(job_id + sessionfile.SUFFIX, folder)
            except OSError:
                changed.append(job_id)  # gone, or the server failed: the read path decides
                continue
            if (
                stat.S_ISREG(st.st_mode)
                and fileversion.version(st) == records[job_id].version
                and st.st_size <= self.settings.max_file_bytes
                and not fileversion.is_racy(st)
            ):
                unchanged.append((job_id, st))
            else:
                changed.append(job_id)
        return unchanged, changed

    def _write_warm_start(self, records: list[tuple[str, Version, bytes]], seen: Version | None) -> None:
        """In a thread of its own, once the service is ready: leave what the warm-up read for
        the next replica, unless another replica left one since this warm-up began."""
        _lower_priority()
        outcome = "skipped"
        if warmstart.current_version(self.warm_start_dir) == seen:
            began = time.monotonic()
            try:
                size = warmstart.write(self.warm_start_dir, self._until_stopped(records), len(records))
            except _Stopped:
                return  # the service is stopping: the temporary file is gone, the old file stays
            except Exception as exc:  # read-only, full, the server gone: the next warm-up reads every file
                outcome = "failed"
                logger.warning(
                    "cannot write the warm-start file: the next replica to start reads every session file",
                    extra={"path": str(warmstart.path(self.warm_start_dir)), "error": str(exc) or type(exc).__name__},
                )
            else:
                outcome = "written"
                logger.info(
                    "warm-start file written",
                    extra={
                        "path": str(warmstart.path(self.warm_start_dir)),
                        "sessions": len(records),
                        "bytes": size,
                        "seconds": round(time.monotonic() - began, 3),
                    },
                )
        writes = self.stats.warm_start_writes
        writes[outcome] = writes.get(outcome, 0) + 1

    def _until_stopped(self, records: list[tuple[str, Version, bytes]]) -> Iterator[tuple[str, Version, bytes]]:
        for count, record in enumerate(records):
            if count % WARM_BATCH == 0 and self.stop_event.is_set():
                raise _Stopped
            yield record

    def _list_until_listed(self) -> tuple[dict[str, int], tuple[int, int, int] | None] | None:
        """The folder's session files (job id -> inode number, in directory order, without a
        stat each: reading a file gives its metadata anyway) and the folder's own key from
        before the listing. A folder that cannot be listed is tried again, backing off, for as
        long as it takes: ready with nothing in memory would answer 404 for every session."""
        delay = RETRY_DELAY_S
        while not self.stop_event.is_set():
            try:
                folder = self.poller.probe_folder() if self.poller is not None else folder_key(os.stat(self.root))
                listing = list_folder(self.root)
            except OSError as exc:
                self._folder_failed(exc)
                self.stop_event.wait(delay)
                delay = min(delay * 2, LIST_RETRY_MAX_S)
                continue
            self._folder_answered()
            return listing, folder
        return None

    def _read_many(self, job_ids: Collection[str]) -> Iterator[tuple[str, LoadedFile | BaseException]]:
        """Read every file: in this thread on a local disk, by a bounded pool of readers on a
        network filesystem (a bounded number of chunks in flight, so memory stays bounded). The
        results come back here, to the store's only writer, in listing order."""
        if not self.network:
            for job_id in job_ids:
                yield job_id, self._try_read(job_id)
            return
        chunks = iter([list(job_ids)[start : start + WARM_CHUNK] for start in range(0, len(job_ids), WARM_CHUNK)])
        in_flight: list[Future[list[tuple[str, LoadedFile | BaseException]]]] = []
        with ThreadPoolExecutor(
            NETWORK_WARM_THREADS, thread_name_prefix="sessions-warm", initializer=_lower_priority
        ) as readers:
            try:
                for chunk in chunks:
                    in_flight.append(readers.submit(self._try_read_chunk, chunk))
                    if len(in_flight) >= 2 * NETWORK_WARM_THREADS:
                        yield from in_flight.pop(0).result()
                        if self.stop_event.is_set():
                            return
                while in_flight:
                    yield from in_flight.pop(0).result()
            finally:
                for future in in_flight:
                    future.cancel()

    def _try_read_chunk(self, job_ids: list[str]) -> list[tuple[str, LoadedFile | BaseException]]:
        if self.stop_event.is_set():
            return []
        return [(job_id, self._try_read(job_id)) for job_id in job_ids]

    def _try_read(self, job_id: str) -> LoadedFile | BaseException:
        """Read one file, from any thread, changing nothing: the failure, if any, is returned
        for the reconciler thread to apply."""
        try:
            return sessionfile.read(self.root, job_id, self.settings.max_file_bytes, forced=self.network)
        except Exception as exc:  # one surprise must not leave the service warming for ever
            return exc

    # --- rescans -------------------------------------------------------------------------------------

    def _scan(self) -> tuple[dict[str, int], dict[str, int]]:
        """Every session file in the folder: job id -> signature, and job id -> inode number."""
        found: dict[str, int] = {}
        inodes: dict[str, int] = {}
        if self._scanner is None:  # a local disk: stat as the listing goes
            with os.scandir(self.root) as entries:
                for entry in entries:
                    job_id = job_id_for(entry.name)
                    if job_id is not None:
                        inodes[job_id] = entry.inode()
                        self._scan_one(job_id, entry.path, found)
            return found, inodes
        # A network mount, in the scanner's thread. A listing brings every file's attributes
        # into the client's cache (NFS's READDIRPLUS, sshfs's own cache) for a few seconds: a
        # stat then costs tens of microseconds, past that a round trip to the file server. So
        # the folder is listed first, then stat-ed by SCAN_STAT_THREADS at once, which ends
        # the pass while the listing's attributes are still there (measured on sshfs at
        # 100,000 files, one core: 1-1.3 s of stats and 3-3.5 s of CPU with six threads, 2.4 s
        # with three; one thread outlived the attributes and took 9-14 s of CPU). Where the stats still turn
        # slow (a bigger folder, a busy machine), the folder is listed again: the client no
        # longer holds what the last listing brought. A listing made while it still holds the
        # last one may be answered from its cache and refresh nothing: the next waits until
        # RELIST_GAP_S after the last, and if it does not make the stats fast again the pass
        # goes on without listing.
        assert self._scan_stats is not None
        listing = self._list_for_scan()
        listed_at = time.monotonic()
        fastest = math.inf  # the lowest median stat time of a chunk in this pass
        relisting, relisted = True, False
        folder = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for start in range(0, len(listing), SCAN_CHUNK):
                chunk = listing[start : start + SCAN_CHUNK]
                parts = [chunk[index::SCAN_STAT_THREADS] for index in range(SCAN_STAT_THREADS)]
                timings: list[float] = []
                for part_found, part_timings in self._scan_stats.map(self._stat_part, parts, [folder] * len(parts)):
                    found.update(part_found)
                    timings += part_timings
                for job_id, _, inode in chunk:
                    inodes[job_id] = inode
                if not timings:
                    continue
                # The median: a stat delayed by another thread (the interpreter lock, the
                # scheduler) moves it little; stats that all became round trips move it a lot.
                median = sorted(timings)[len(timings) // 2]
                slow = median > SLOW_STATS * fastest
                if slow and relisted:
                    relisting = False  # the listing did not bring them back: stat on
                relisted = False
                if slow and relisting:
                    # Waiting costs nothing; a stat past the client's cache costs ten cached ones.
                    self.stop_event.wait(max(0.0, listed_at + RELIST_GAP_S - time.monotonic()))
                    self._list_for_scan()
                    listed_at = time.monotonic()
                    relisted = True
                fastest = min(fastest, median)
        finally:
            os.close(folder)
        return found, inodes

    def _stat_part(self, part: list[tuple[str, str, int]], folder: int) -> tuple[dict[str, int], list[float]]:
        """In one of the scan's stat threads: the signatures of `part`, and each stat's time."""
        found: dict[str, int] = {}
        timings: list[float] = []
        for job_id, name, _ in part:
            self._wait_folder_free()  # give way to announced changes
            started = time.perf_counter()
            self._scan_one(job_id, name, found, folder)
            timings.append(time.perf_counter() - started)
        return found, timings

    def _list_for_scan(self) -> list[tuple[str, str, int]]:
        """(job id, file name, inode number) of every session file, listed at once."""
        with os.scandir(self.root) as entries:
            return [(job_id, entry.name, entry.inode()) for entry in entries if (job_id := job_id_for(entry.name))]

    @staticmethod
    def _scan_one(job_id: str, path: str, found: dict[str, int], dir_fd: int | None = None) -> None:
        st = fileversion.stat_following_links(path, dir_fd)
        if st is None or stat.S_ISDIR(st.st_mode):
            return  # deleted since listed, or a sub-folder whatever its name
        found[job_id] = signature(st)

    def _scan_with_key(self) -> tuple[tuple[int, int, int] | None, dict[str, int], dict[str, int]]:
        # The folder's key as the poller sees it (past the attribute cache where it asks so),
        # from before the listing: a change during it is seen by the next poll.
        folder = self.poller.probe_folder() if self.poller is not None else None
        listing, inodes = self._scan()
        return folder, listing, inodes

    def _start_rescan(self, *, again: bool = False) -> None:
        """A rescan: now, in this thread; on a network filesystem, started in the scanner's
        thread and applied by `_finish_rescan` when it is done (one at a time). With `again`
        (a recheck after a warm start), a scan still running, which began too early to see
        what the recheck is for, is followed by another."""
        if self._scanner is None:
            self._rescan()
            return
        if self._scanning is not None:
            self._rescan_again = self._rescan_again or again
            return
        self._scan_started = time.monotonic()
        self._scanning = self._scanner.submit(self._scan_with_key)
        self._scanning.add_done_callback(lambda _: self.pending.wake())

    def _finish_rescan(self) -> None:
        scanning = self._scanning
        if scanning is None or not scanning.done():
            return
        self._scanning = None
        try:
            folder, listing, inodes = scanning.result()
        except OSError as exc:
            self._folder_failed(exc)
        else:
            self._apply_scan(self._scan_started, folder, listing, inodes)
        if self._rescan_again:
            self._rescan_again = False
            self._start_rescan()

    def _rescan(self) -> None:
        started = time.monotonic()
        try:
            folder, listing, inodes = self._scan_with_key()
        except OSError as exc:
            self._folder_failed(exc)
            return
        self._apply_scan(started, folder, listing, inodes)

    def _apply_scan(
        self, started: float, folder: tuple[int, int, int] | None, listing: dict[str, int], inodes: dict[str, int]
    ) -> None:
        """Make the store agree with a scan: every file whose signature differs (or that was
        read too soon after a write), and every session whose file is gone, is read again."""
        self._folder_answered()
        if self.poller is not None:
            self.poller.listed(inodes, folder)
        store = self.store
        for count, (job_id, sig) in enumerate(listing.items()):
            if store.signature(job_id) != sig or store.is_racy(job_id):
                self._reconcile_one(job_id)
                self._serve_announced()
            elif count % SERVE_EVERY == 0:
                self._serve_announced()
        for job_id in store.job_ids() - listing.keys():
            self._reconcile_one(job_id)
        self.stats.rescans += 1
        self.stats.rescan_seconds += time.monotonic() - started

    # --- one file ------------------------------------------------------------------------------------

    def _reconcile_one(self, job_id: str) -> None:
        """`_reconcile`, where a surprise (a bug, an error no rule expected) costs this id a
        retry, not the rest of the batch or the rescan."""
        try:
            self._reconcile(job_id, force=True)
        except Exception:
            logger.exception("cannot reconcile a session file; will retry", extra={"job_id": job_id})
            self._retry.add(job_id)

    def _reconcile(self, job_id: str, *, force: bool) -> None:
        """Make the store agree with the file `<job_id>.json` as it is now."""
        path = os.path.join(self.root, job_id + sessionfile.SUFFIX)
        try:
            st = fileversion.stat(path)
        except FileNotFoundError:
            self._applied(self.store.apply_deleted(job_id), job_id)
            return
        except InvalidSessionFile as exc:
            self._invalid(job_id, fileversion.stat_following_links(path), exc.reason)
            return
        except TransientReadError as exc:
            self._transient(job_id, str(exc))
            return
        if stat.S_ISDIR(st.st_mode):
            self._applied(self.store.apply_deleted(job_id), job_id)  # sub-folders are not sessions
            return
        if not force and self.store.signature(job_id) == signature(st) and not self.store.is_racy(job_id):
            return
        loaded = self._read(job_id, st)
        if loaded is None:
            return
        change = self.store.apply_loaded(loaded)
        if change is not Change.NONE:
            lag = time.time() - loaded.version.mtime_ns / 1e9
            if 0 <= lag < 60:  # a copied file may keep an old modification time
                self.on_reload_lag(lag)
        self._applied(change, job_id)

    def _read(self, job_id: str, st: os.stat_result | None = None) -> LoadedFile | None:
        """Read one file; what is not a valid session is applied here and gives None."""
        outcome = self._try_read(job_id)
        if isinstance(outcome, BaseException):
            self._settle(job_id, outcome, st)
            return None
        return outcome

    def _settle(self, job_id: str, failure: BaseException, st: os.stat_result | None = None) -> None:
        """Apply what a failed read means: gone, invalid, or to be tried again."""
        if isinstance(failure, FileNotFoundError):
            self._applied(self.store.apply_deleted(job_id), job_id)
        elif isinstance(failure, InvalidSessionFile):
            if st is None:  # the same signature a rescan will see, or it would see a change
                st = fileversion.stat_following_links(os.path.join(self.root, job_id + sessionfile.SUFFIX))
            self._invalid(job_id, st, failure.reason)
        elif isinstance(failure, TransientReadError):
            self._transient(job_id, str(failure))
        else:
            logger.error(
                "cannot read a session file; will retry",
                extra={"job_id": job_id},
                exc_info=(type(failure), failure, failure.__traceback__),
            )
            self._retry.add(job_id)

    def _invalid(self, job_id: str, st: os.stat_result | None, reason: str) -> None:
        sig = signature(st) if st is not None else 0
        racy = st is not None and fileversion.is_racy(st)
        change = self.store.apply_invalid(job_id, sig, racy, reason)
        if change is not Change.NONE:
            logger.warning(
                "invalid session file",
                extra={"job_id": job_id, "reason": reason, "served": change is Change.STALE},
            )
        self._applied(change, job_id)

    def _transient(self, job_id: str, error: str) -> None:
        self.stats.transient_errors += 1
        if not self._retry:
            logger.warning("cannot read a session file now; will retry", extra={"job_id": job_id, "error": error})
        self._retry.add(job_id)

    def _applied(self, change: Change, job_id: str) -> None:
        if change is Change.NONE:
            return
        self.stats.changes[change.value] = self.stats.changes.get(change.value, 0) + 1
        if self.poller is not None and self.ready.is_set():
            self.poller.applied(job_id)
        self.on_change(change, job_id)
        self._unannounced += 1
        # On a network filesystem every read is round trips: the next change is milliseconds
        # away, and this one goes to the streams now rather than wait for it.
        if self._unannounced >= ANNOUNCE_EVERY or self.network:
            self._announce()

    def _announce(self) -> None:
        if self._unannounced:
            self._unannounced = 0
            self.on_applied()
