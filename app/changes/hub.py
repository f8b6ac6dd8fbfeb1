"""The change hub: from the store's change log to every stream and waiting request (docs/contract.md#change-stream).

The reconciler thread applies a batch of changes, then calls `notify` once; `notify` schedules
one delivery on the event loop (behind a "scheduled" flag, so a burst costs one wake-up). A
delivery reads the new changes from the log and hands each to the streams that want it:
- collection watches are grouped by filter and format: an event is matched and encoded once per
  group and its bytes are pushed to every stream of the group; groups are indexed by the user
  they filter on, so a change costs O(groups that can match + streams that match), never
  O(all streams);
- job watches and long polls are indexed by job id: a job's changes in a delivery become one
  offer of its current version (a stream that lags is sent the latest version next).

One periodic task sends every bookmark that is due (streams are kept in order of their last
event, so it only visits the due ones); one timer serves every stream lifetime and wait deadline
(app.changes.deadlines). On drain every stream ends and every wait answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import NamedTuple

from app.changes import events
from app.changes.deadlines import Deadline, Deadlines
from app.changes.events import Format
from app.changes.streams import End, JobStream, Kind, Stream
from app.errors import NotServingStreams, ServiceError, StreamFellBehind, TooManyStreams
from app.settings import Settings
from app.store.changelog import Expired, StoreChange
from app.store.index import SessionFilter
from app.store.loader import MissLoader
from app.store.sessionfile import Document
from app.store.store import SessionStore

logger = logging.getLogger("app.hub")

DELIVERY_BATCH = 2_000  # changes per loop step: a flood of changes does not hold the loop
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Group(NamedTuple):
    """Collection streams with the same filter and format: one encoding per event."""

    filter: SessionFilter
    format: Format
    streams: set[Stream]


class Wait:
    """A long poll: a request waiting for a job's version to differ from `etag`."""

    __slots__ = ("job_id", "etag", "future", "deadline")

    def __init__(self, job_id: str, etag: bytes, future: asyncio.Future[str]) -> None:
        self.job_id = job_id
        self.etag = etag
        self.future = future
        self.deadline: Deadline | None = None

    def resolve(self, reason: str) -> None:
        if not self.future.done():
            self.future.set_result(reason)


class StreamStats:
    """What the metrics publish: plain numbers on the event loop (app.ops.metrics reads them)."""

    def __init__(self) -> None:
        self.open = {"collection": 0, "job": 0, "wait": 0}
        self.events: dict[tuple[str, str], int] = {}
        self.ended: dict[tuple[str, str], int] = {}
        self.rejected = 0
        self.lag_buckets = [0] * (len(LAG_BUCKETS) + 1)
        self.lag_sum = 0.0

    def sent(self, kind: Kind, type_: bytes, streams: int) -> None:
        key = (kind.value, type_.decode())
        self.events[key] = self.events.get(key, 0) + streams

    def end(self, kind: str, reason: str) -> None:
        key = (kind, reason)
        self.ended[key] = self.ended.get(key, 0) + 1

    def lag(self, seconds: float) -> None:
        if seconds < 0:
            seconds = 0.0
        self.lag_buckets[bisect_left(LAG_BUCKETS, seconds)] += 1
        self.lag_sum += seconds


class ChangeHub:
    def __init__(
        self,
        store: SessionStore,
        loader: MissLoader,
        settings: Settings,
        error_body: Callable[[ServiceError], bytes],
    ) -> None:
        self.store = store
        self.loader = loader
        self.settings = settings
        # The problem document of an error, for a stream's ERROR event: the API's problem table
        # (app.api.problems) knows how errors are told, the hub only when to tell them.
        self.error_body = error_body
        self.stats = StreamStats()
        self.delivered = 0  # every change up to this revision has been handed to the streams
        self.ready = False  # the warm-up is done: the log holds the history streams need
        self.stopped = False  # drained: no new streams, waits answer at once
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: Deadlines | None = None
        self._scheduled = False
        self._streams: set[Stream] = set()  # every open stream, live or catching up
        self._groups: dict[tuple[SessionFilter, Format], Group] = {}
        self._groups_by_user: dict[str | None, list[Group]] = {}
        self._jobs: dict[str, set[JobStream]] = {}
        self._waits: dict[str, set[Wait]] = {}
        # Live streams in the order of their last event: the front ones are due a bookmark.
        self._quiet: dict[Stream, None] = {}
        self._lifetimes: dict[Stream, Deadline] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._loads: set[asyncio.Task[None]] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """On the event loop, before the reconciler starts notifying."""
        self._loop = asyncio.get_running_loop()
        self._deadlines = Deadlines(self._loop)
        self._heartbeat = asyncio.create_task(self._send_bookmarks(), name="sessions-bookmarks")

    async def close(self) -> None:
        self.drain()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        for task in list(self._loads):
            task.cancel()
        if self._deadlines is not None:
            self._deadlines.close()

    def drain(self) -> None:
        """End every stream cleanly (a last bookmark, then the end of the response) and answer
        every waiting request: clients move to another replica. On the event loop."""
        if self.stopped:
            return
        self.stopped = True
        for stream in list(self._streams):
            self._end(stream, End.DRAIN)
        for waits in list(self._waits.values()):
            for wait in list(waits):
                wait.resolve("drain")
        if self._streams:
            logger.info("streams ended for shutdown", extra={"streams": len(self._streams)})

    # --- from the reconciler thread ------------------------------------------------------------

    def notify(self) -> None:
        """New changes are in the log. From any thread; at most one delivery is scheduled."""
        if self._scheduled or self._loop is None:
            return
        self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: shutting down
            self._scheduled = False

    # --- delivery, on the loop -------------------------------------------------------------------

    def _deliver(self) -> None:
        self._scheduled = False  # before reading the log: a change appended now schedules again
        if not self.deliver_now():
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._deliver)  # more to come, after other callbacks ran

    def deliver_now(self) -> bool:
        """Hand the next changes to the streams; True once the hub is up to date."""
        store = self.store
        if not self.ready:
            if store.log.start == 0 and store.revision == 0:
                return True  # still warming: no history yet
            self.ready = True
            self.delivered = store.log.start
        try:
            changes = store.changes_after(self.delivered, DELIVERY_BATCH)
        except Expired:
            self._fell_behind()
            return True
        if not changes:
            return True
        wall = time.time()
        now = self._now()
        touched: dict[str, StoreChange] = {}
        for change in changes:
            if self._groups:
                self._fan_out(change, now, wall)
            if change.job_id in self._jobs or change.job_id in self._waits:
                touched[change.job_id] = change
            self.delivered = change.revision
        revision = self.token(self.delivered)
        for job_id, change in touched.items():
            self._refresh_job(job_id, revision, change.changed_at)
        return len(changes) < DELIVERY_BATCH

    def catch_up(self, revision: int) -> None:
        """Deliver until the hub has handed out every change up to `revision`."""
        while self.delivered < revision and not self.deliver_now():
            pass

    def _fell_behind(self) -> None:
        """The loop fell so far behind that the log no longer holds what it did not deliver:
        collection streams cannot be told what they missed; job streams and waits catch up
        with the current version."""
        logger.warning("change stream fell behind the history; collection streams must relist")
        self.delivered = self.store.log.head
        revision = self.token(self.delivered)
        for stream in list(self._streams):
            if stream.kind is Kind.COLLECTION:
                stream.fail(self._fell_behind_error(stream.format))
        for job_id in list(self._jobs.keys() | self._waits.keys()):
            self._refresh_job(job_id, revision, None)

    def _fan_out(self, change: StoreChange, now: float, wall: float) -> None:
        old, new = change.old, change.new
        users: tuple[str | None, ...] = (None,)
        for entry in (old, new):
            if entry is not None and entry.user_id is not None and entry.user_id not in users:
                users += (entry.user_id,)
        revision = b""
        stats = self.stats
        for user in users:
            for group in self._groups_by_user.get(user, ()):
                matches = group.filter.matches
                was = old is not None and matches(old.status, old.user_id)
                now_matches = new is not None and matches(new.status, new.user_id)
                if not (was or now_matches):
                    continue
                if now_matches:
                    type_ = events.MODIFIED if was else events.ADDED
                    summary = new.summary  # type: ignore[union-attr]  # now_matches: new is set
                else:
                    type_, summary = events.DELETED, old.summary  # type: ignore[union-attr]
                if not revision:
                    revision = self.token(change.revision)
                data = events.encode(group.format, type_, revision, summary, event_id=revision)
                sent = 0
                for stream in group.streams:
                    try:
                        if stream.push(data, now):
                            sent += 1
                        else:
                            self._overflow(stream)
                    except Exception:  # one broken stream must not stop the others' events
                        self._broken(stream)
                stats.sent(Kind.COLLECTION, type_, sent)
        if revision:
            self._observe_lag(wall - change.changed_at)

    def _observe_lag(self, seconds: float) -> None:
        if 0 <= seconds < 60:  # a file copied in may keep an old modification time
            self.stats.lag(seconds)

    def _broken(self, stream: Stream) -> None:
        logger.exception("a stream failed; ending it", extra={"kind": stream.kind.value})
        stream.end(End.CLIENT)

    def _overflow(self, stream: Stream) -> None:
        if stream.ended is None:
            stream.fail(self._fell_behind_error(stream.format))
            self.stats.sent(Kind.COLLECTION, events.ERROR, 1)

    def _fell_behind_error(self, format: Format) -> bytes:
        problem = self.error_body(
            StreamFellBehind(
                "this stream fell behind the changes by more than its buffer; list again and watch from "
                "the list's X-Revision"
            )
        )
        return events.error(format, self.token(self.delivered), problem)

    def _refresh_job(self, job_id: str, revision: bytes, changed_at: float | None) -> None:
        """Offer the job's current version to its streams, and wake the waits it concerns."""
        store = self.store
        etag = store.current_etag(job_id)
        waits = self._waits.get(job_id)
        if waits:
            for wait in list(waits):
                if wait.etag != etag:
                    wait.resolve("changed")
        streams = self._jobs.get(job_id)
        if not streams:
            return
        if etag is None:
            self.offer(job_id, None, revision, changed_at)
            return
        if all(stream.etag == etag for stream in streams):
            return
        document = store.current_document(job_id)
        if document is not None and document.etag == etag:
            self.offer(job_id, document, revision, changed_at)
            return
        if document is None:
            # Not in memory (evicted, or the cache is off): read it off the loop, once.
            task = asyncio.ensure_future(self._load_and_offer(job_id, changed_at))
            self._loads.add(task)
            task.add_done_callback(self._loads.discard)
        # else a newer version than `etag` is being applied: the next delivery offers it

    async def _load_and_offer(self, job_id: str, changed_at: float | None) -> None:
        try:
            document = await self.loader.load(job_id)
        except Exception:  # noqa: BLE001 (a vanished or unreadable file: its change will follow)
            return
        self.offer(job_id, document, self.token(self.delivered), changed_at)

    def offer(self, job_id: str, document: Document | None, revision: bytes, changed_at: float | None) -> None:
        """Send `document` (None: deleted) to the job's streams that do not have it, if it is
        still the current version."""
        streams = self._jobs.get(job_id)
        if not streams:
            return
        if self.store.current_etag(job_id) != (document.etag if document is not None else None):
            return  # superseded while it was being read: the newer one follows
        now = self._now()
        encoded: dict[object, bytes] = {}
        sent: dict[bytes, int] = {}
        for stream in list(streams):
            try:
                type_ = stream.offer(document, revision, now, encoded)
            except Exception:  # one broken stream must not stop the others' events
                self._broken(stream)
                continue
            if type_ is not None:
                sent[type_] = sent.get(type_, 0) + 1
        for type_, count in sent.items():
            self.stats.sent(Kind.JOB, type_, count)
        if sent and changed_at is not None:
            self._observe_lag(time.time() - changed_at)

    # --- streams and waits ---------------------------------------------------------------------

    def token(self, revision: int) -> bytes:
        return self.store.log.token(revision).encode("ascii")

    def admit(self, kind: str) -> None:
        """Count a new stream or wait in, or refuse it (503)."""
        if not self.ready or self.stopped:
            raise NotServingStreams(
                "the service is warming up; try again shortly"
                if not self.ready
                else "the service is shutting down; watch through another replica"
            )
        open_now = self.stats.open
        if open_now["collection"] + open_now["job"] + open_now["wait"] >= self.settings.max_streams:
            self.stats.rejected += 1
            raise TooManyStreams(
                f"this replica serves at most {self.settings.max_streams} streams and waiting requests at once"
            )
        open_now[kind] += 1

    def open_stream(self, stream: Stream) -> None:
        """A stream was admitted: give it its lifetime. It gets events once attached."""
        self._streams.add(stream)
        timeout = self.settings.stream_timeout_s
        assert self._deadlines is not None
        deadline = self._deadlines.add(
            self._now() + random.uniform(timeout, 2 * timeout),
            lambda: self._end(stream, End.TIMEOUT),
        )
        stream.last_push = self._now()
        self._lifetimes[stream] = deadline

    def attach_collection(self, stream: Stream, filter: SessionFilter) -> None:
        """Live from now on: the stream has every change up to `self.delivered`."""
        key = (filter, stream.format)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(filter, stream.format, set())
            self._groups_by_user.setdefault(filter.user_id, []).append(group)
        group.streams.add(stream)
        self._quiet[stream] = None

    def attach_job(self, stream: JobStream) -> None:
        self._jobs.setdefault(stream.job_id, set()).add(stream)
        self._quiet[stream] = None

    def close_stream(self, stream: Stream, filter: SessionFilter | None = None) -> None:
        self._streams.discard(stream)
        self._quiet.pop(stream, None)
        deadline = self._lifetimes.pop(stream, None)
        if deadline is not None and self._deadlines is not None:
            self._deadlines.cancel(deadline)
        if isinstance(stream, JobStream):
            streams = self._jobs.get(stream.job_id)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self._jobs[stream.job_id]
        elif filter is not None:
            key = (filter, stream.format)
            group = self._groups.get(key)
            if group is not None:
                group.streams.discard(stream)
                if not group.streams:
                    del self._groups[key]
                    by_user = self._groups_by_user[filter.user_id]
                    by_user.remove(group)
                    if not by_user:
                        del self._groups_by_user[filter.user_id]
        self.stats.open[stream.kind.value] -= 1
        self.stats.end(stream.kind.value, (stream.ended or End.CLIENT).value)

    def touch(self, stream: Stream) -> None:
        """The stream just had an event: its bookmark is due `bookmark_s` from now."""
        quiet = self._quiet
        if stream in quiet:
            del quiet[stream]
            quiet[stream] = None

    def open_wait(self, job_id: str, etag: bytes, seconds: float) -> Wait:
        """A long poll (already admitted) waiting for the job to differ from `etag`."""
        assert self._loop is not None and self._deadlines is not None
        wait = Wait(job_id, etag, self._loop.create_future())
        self._waits.setdefault(job_id, set()).add(wait)
        wait.deadline = self._deadlines.add(self._now() + seconds, lambda: wait.resolve("timeout"))
        if self.stopped:
            wait.resolve("drain")
        elif self.store.current_etag(job_id) != etag:  # changed before it was registered
            wait.resolve("changed")
        return wait

    def close_wait(self, wait: Wait) -> None:
        """A wait is over (its request may wait again: it keeps its slot until `finish_wait`)."""
        waits = self._waits.get(wait.job_id)
        if waits is not None:
            waits.discard(wait)
            if not waits:
                del self._waits[wait.job_id]
        if wait.deadline is not None and self._deadlines is not None:
            self._deadlines.cancel(wait.deadline)

    def finish_wait(self, reason: str) -> None:
        """An admitted long poll has answered (or its client has gone)."""
        self.stats.open["wait"] -= 1
        self.stats.end("wait", reason)

    def release(self, kind: str) -> None:
        """An admitted stream or wait that ended before it was opened (a bad request)."""
        self.stats.open[kind] -= 1

    # --- bookmarks -------------------------------------------------------------------------------

    def _end(self, stream: Stream, reason: End) -> None:
        """End a stream cleanly, with a last bookmark once what is pending is written."""
        if stream.ended is None and stream in self._quiet:
            # Live: it has been given every change up to now, and is given none once ended.
            # Its last bookmark names this revision, not the hub's when the bookmark is
            # written (changes delivered meanwhile never reach it: naming them would make
            # its client skip them).
            stream.position = self.delivered
        stream.end(reason, functools.partial(self._bookmark, stream))

    def _bookmark(self, stream: Stream) -> bytes | None:
        """A stream's last bookmark: the revision up to which it has every change (set by
        `_end` for a live stream, by its catch-up for one that was not live yet); none for a
        stream whose initial state is unfinished (its client must start again)."""
        if stream.position is None:
            return None
        token = self.token(stream.position)
        self.stats.sent(stream.kind, events.BOOKMARK, 1)
        event_id = token if stream.kind is Kind.COLLECTION else None
        return events.encode(stream.format, events.BOOKMARK, token, event_id=event_id)

    async def _send_bookmarks(self) -> None:
        interval = min(1.0, self.settings.bookmark_s / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                self.send_due_bookmarks()
            except Exception:  # the heartbeat of every stream: it must outlive any surprise
                logger.exception("sending bookmarks failed")

    def send_due_bookmarks(self) -> int:
        now = self._now()
        due_before = now - self.settings.bookmark_s
        due = list(_take_while(self._quiet, lambda stream: stream.last_push <= due_before))
        if not due:
            return 0
        encoded: dict[tuple[Format, Kind], bytes] = {}
        revision = self.token(self.delivered)
        sent = 0
        for stream in due:
            if stream.ended is not None:
                del self._quiet[stream]  # ending: no more heartbeats (its task removes the rest)
                continue
            key = (stream.format, stream.kind)
            data = encoded.get(key)
            if data is None:
                event_id = revision if stream.kind is Kind.COLLECTION else None
                data = encoded[key] = events.encode(stream.format, events.BOOKMARK, revision, event_id=event_id)
            try:
                if stream.push(data, now):
                    sent += 1
                    self.stats.sent(stream.kind, events.BOOKMARK, 1)
                else:
                    self._overflow(stream)
            except Exception:
                self._broken(stream)
        return sent

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else time.monotonic()


def _take_while(streams: dict[Stream, None], due: Callable[[Stream], bool]) -> Iterator[Stream]:
    for stream in streams:
        if not due(stream):
            return
        yield stream
