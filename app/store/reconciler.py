"""The reconciler: one worker thread that keeps the store equal to the folder.

It warms the store at start-up, then applies what the watcher reports and, periodically, a
rescan that compares the folder with the store (the safety net for whatever events miss). Being
the store's only writer, it never races itself: a slow read cannot overwrite a newer one.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.errors import InvalidSessionFile, TransientReadError
from app.settings import Settings
from app.store import fileversion, sessionfile
from app.store.fileversion import signature
from app.store.pending import PendingChanges
from app.store.sessionfile import LoadedFile, job_id_for
from app.store.store import Change, SessionStore
from app.store.watcher import NativeWatcher
from app.store.watchmode import WatchPlan, plan

logger = logging.getLogger("app.reconciler")

BACKGROUND_NICENESS = 10
WARM_BATCH = 256  # files applied per lock acquisition during the warm-up
RETRY_DELAY_S = 0.5  # after a transient read error (out of file descriptors, memory)
ANNOUNCE_EVERY = 256  # changes: a long rescan hands its changes to the streams as it goes
WATCHER_START_TIMEOUT_S = 5.0


@dataclass
class ReconcilerStats:
    warmup_seconds: float | None = None
    rescans: int = 0
    rescan_seconds: float = 0.0
    changes: dict[str, int] = field(default_factory=dict)
    transient_errors: int = 0


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
        self._retry: set[str] = set()
        self._folder_missing = False
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
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.pending.wake()
        deadline = time.monotonic() + timeout
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self.watcher is not None:
            self.watcher.join(max(0.0, deadline - time.monotonic()))

    # --- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        _lower_priority()
        if self.watcher is not None:
            self.watcher.settled.wait(WATCHER_START_TIMEOUT_S)
        self._warm_up()
        self.ready.set()
        self.on_applied()  # the history begins: streams can open
        next_rescan = time.monotonic() + self._rescan_interval()
        while not self.stop_event.is_set():
            interval = self._rescan_interval()
            timeout = None if interval == 0 else max(0.0, next_rescan - time.monotonic())
            if self._retry:
                timeout = RETRY_DELAY_S if timeout is None else min(timeout, RETRY_DELAY_S)
            job_ids, rescan = self.pending.take(timeout)
            if self.stop_event.is_set():
                return
            try:
                if self._retry:
                    job_ids |= self._retry
                    self._retry = set()
                for job_id in job_ids:
                    self._reconcile_one(job_id)
                if rescan or (interval and time.monotonic() >= next_rescan):
                    self._rescan()
                    next_rescan = time.monotonic() + self._rescan_interval()
            except Exception:  # never let one bad surprise stop the store from updating
                logger.exception("reconciler error; rescanning")
                self.pending.request_rescan()
                self.stop_event.wait(1.0)
            finally:
                self._announce()

    def _rescan_interval(self) -> float:
        if self.watch.mode == "poll":
            return self.settings.poll_interval_s
        if self.watcher is not None and not self.watcher.healthy.is_set():
            return self.settings.poll_interval_s  # the native watch is down: poll meanwhile
        return self.settings.rescan_interval_s

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
        try:
            job_ids = self._list()
        except OSError as exc:
            logger.error("cannot list the sessions folder", extra={"folder": str(self.root), "error": str(exc)})
            job_ids = []
            self.pending.request_rescan()
        batch: list[LoadedFile] = []
        for job_id in job_ids:
            try:
                loaded = self._read(job_id)
            except Exception:  # one surprise must not leave the service warming for ever
                logger.exception("cannot read a session file; will retry", extra={"job_id": job_id})
                self._retry.add(job_id)
                continue
            if loaded is None:
                continue
            batch.append(loaded)
            if len(batch) == WARM_BATCH:
                self.store.warm(batch)
                batch = []
                if self.stop_event.is_set():
                    return
        self.store.warm(batch)
        self.store.finish_warm_up()
        self.stats.warmup_seconds = time.monotonic() - started
        logger.info(
            "warm-up done",
            extra={
                "sessions": self.store.session_count(),
                "files": len(job_ids),
                "seconds": round(self.stats.warmup_seconds, 3),
            },
        )

    def _list(self) -> list[str]:
        """The job ids of the folder's session files, in directory order, without a stat each:
        reading the file gives its metadata anyway."""
        job_ids = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                job_id = job_id_for(entry.name)
                if job_id is None:
                    continue
                try:
                    if entry.is_dir():
                        continue
                except OSError:
                    pass  # a link loop raises: not a folder; reading it says what it is
                job_ids.append(job_id)
        return job_ids

    # --- rescans -------------------------------------------------------------------------------------

    def _scan(self) -> dict[str, int]:
        """Every session file in the folder: job id -> signature."""
        found: dict[str, int] = {}
        with os.scandir(self.root) as entries:
            for entry in entries:
                job_id = job_id_for(entry.name)
                if job_id is None:
                    continue
                st = fileversion.stat_following_links(entry.path)
                if st is None:
                    continue  # deleted since listed
                if stat.S_ISDIR(st.st_mode):
                    continue  # a sub-folder, whatever its name
                found[job_id] = signature(st)
        return found

    def _rescan(self) -> None:
        started = time.monotonic()
        try:
            listing = self._scan()
        except OSError as exc:
            if not self._folder_missing:
                logger.error(
                    "cannot list the sessions folder; serving what is in memory",
                    extra={"folder": str(self.root), "error": str(exc)},
                )
            self._folder_missing = exc.errno in (errno.ENOENT, errno.ENOTDIR)
            return
        if self._folder_missing:
            logger.warning("sessions folder is back", extra={"folder": str(self.root)})
            self._folder_missing = False
        store = self.store
        for job_id, sig in listing.items():
            if store.signature(job_id) != sig or store.is_racy(job_id):
                self._reconcile_one(job_id)
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
            lag = time.time() - loaded.mtime_ns / 1e9
            if 0 <= lag < 60:  # a copied file may keep an old modification time
                self.on_reload_lag(lag)
        self._applied(change, job_id)

    def _read(self, job_id: str, st: os.stat_result | None = None) -> LoadedFile | None:
        """Read one file; what is not a valid session is applied here and gives None."""
        try:
            return sessionfile.read(self.root, job_id, self.settings.max_file_bytes)
        except FileNotFoundError:
            self._applied(self.store.apply_deleted(job_id), job_id)
        except InvalidSessionFile as exc:
            if st is None:  # the same signature a rescan will see, or it would see a change
                st = fileversion.stat_following_links(os.path.join(self.root, job_id + sessionfile.SUFFIX))
            self._invalid(job_id, st, exc.reason)
        except TransientReadError as exc:
            self._transient(job_id, str(exc))
        return None

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
        self.on_change(change, job_id)
        self._unannounced += 1
        if self._unannounced >= ANNOUNCE_EVERY:
            self._announce()

    def _announce(self) -> None:
        if self._unannounced:
            self._unannounced = 0
            self.on_applied()
