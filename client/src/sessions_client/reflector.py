"""The watch loops' decisions, without their I/O: what to ask for, what each event means to the
caller, when to resume, when to list again, how long to wait first. The shape of client-go's
reflector (kubernetes/client-go, tools/cache/reflector.go): list, watch from the list's
revision, resume from the last revision seen after a dropped or ended stream, list again on a
410. The sync and async clients only open the streams, read their bytes and sleep.

The collection's "list" is the initial-state watch (a watch without a revision: an ADDED event
for every session that matches, then a BOOKMARK with `initial_events_end`): one request, one
consistent state, where a list of several pages is not one (see `SessionList`). A list of a
single page, or of pages that all reflect one revision, is consistent too, and a watch can
start from it (`since`)."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, TypeVar

from sessions_client.backoff import Backoff
from sessions_client.errors import ProtocolError, problem_from, problem_from_object
from sessions_client.models import EventType, Filter, JobEvent, Session, SessionList, Summary, WatchEvent
from sessions_client.wire import CLIENT_KEY_HEADER, JOBS, job_path, load_event

logger = logging.getLogger("sessions_client")

# Statuses a watch retries (after Retry-After and the backoff): a replica warming up, draining,
# at its stream limit, or a proxy with no replica to send to.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# A stream that lived this long, or brought a change, was healthy: the backoff starts again.
# (client-go counts a watch that ended within a second without an event as a failure too.)
HEALTHY_AFTER_S = 1.0

Clock = Callable[[], float]
E = TypeVar("E", WatchEvent, JobEvent)
# A stream request: path, query parameters, headers.
Target = tuple[str, dict[str, str], dict[str, str]]


class StreamReflector(Protocol[E]):
    """What the clients' one stream loop needs of a reflector."""

    broken: bool

    def target(self) -> Target: ...

    def opened(self) -> None: ...

    def refused(self, status: int, headers: Mapping[str, str], body: bytes) -> float: ...

    def ended(self, error: BaseException | None) -> float: ...

    def receive(self, line: bytes) -> list[E]: ...


class Attempts:
    """Failed attempts in a row, for the backoff. A healthy stream that ends (the server ends
    every stream after its lifetime, and all of them when it shuts down) is followed by a short
    jittered pause, so that the callers of a replica that went away come back spread out."""

    def __init__(self, backoff: Backoff, clock: Clock) -> None:
        self.backoff = backoff
        self.clock = clock
        self.failures = 0
        self._opened_at: float | None = None
        self._fruitful = False

    def opened(self) -> None:
        self._opened_at = self.clock()
        self._fruitful = False

    def fruitful(self) -> None:
        self._fruitful = True

    def ended(self) -> float:
        opened_at, self._opened_at = self._opened_at, None
        if opened_at is not None and (self._fruitful or self.clock() - opened_at >= HEALTHY_AFTER_S):
            self.failures = 0
        self.failures += 1
        return self.backoff.delay(self.failures)

    def refused(self, retry_after: float | None) -> float:
        self._opened_at = None
        self.failures += 1
        return self.backoff.delay(self.failures, retry_after)


def watch_filter(
    status: str | Iterable[str] | None, user_id: str | None, include_saved: bool, since: SessionList | None
) -> Filter:
    """The filters given, or else those of the list a watch starts from."""
    filter = Filter.of(status, user_id, include_saved)
    return since.filter if since is not None and filter == Filter() else filter


def diff(before: Mapping[str, Summary], after: Mapping[str, Summary], revision: str) -> list[WatchEvent]:
    """What turns `before` into `after`, as events: DELETED for what vanished, then ADDED and
    MODIFIED in `after`'s order (the list order); nothing for what did not change. An informer's
    relist, in the caller's terms."""
    events = [
        WatchEvent(EventType.DELETED, revision, old, old) for job_id, old in before.items() if job_id not in after
    ]
    for job_id, new in after.items():
        old = before.get(job_id)
        if old is None:
            events.append(WatchEvent(EventType.ADDED, revision, new))
        elif old.data != new.data:
            events.append(WatchEvent(EventType.MODIFIED, revision, new, old))
    return events


class CollectionReflector:
    """The state of one collection watch: the sessions it has (`state`), the revision it resumes
    from (None: the next stream starts with an initial state), and the initial state being
    received. Never resumes from a revision of the initial ADDED events: until the bookmark
    that ends them, the caller does not have that state."""

    def __init__(
        self,
        filter: Filter,
        backoff: Backoff,
        *,
        initial_events: bool = True,
        since: SessionList | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.filter = filter
        self.state: dict[str, Summary] = {}
        self.revision: str | None = None
        self.lists = 0  # initial states received: the first one and every relist
        self.relists = 0  # revisions found expired (a 410, or an ERROR event)
        self.resumes = 0  # streams opened from a revision
        self.broken = False  # the stream sent an ERROR: drop it (the server ends it too)
        self._snapshot: dict[str, Summary] | None = None
        # Names this watch to a load balancer (the reference HAProxy hashes collection watches
        # on it): its resumes reach the replica whose revisions it holds while that one is up,
        # instead of a 410 and a relist elsewhere. Random: watches spread over the replicas.
        self.key = secrets.token_hex(8)
        self._quiet = not initial_events  # the first initial state is kept, not sent to the caller
        self._attempts = Attempts(backoff, clock)
        if since is not None:
            if since.filter != filter:
                raise ValueError(f"since= was listed with {since.filter}, not {filter}")
            self.state = since.by_id()
            self.revision = since.revision  # None: pages of several revisions; an initial state diffs
            self._quiet = False

    def target(self) -> Target:
        """The next stream: from the revision, or an initial state."""
        self.broken = False
        params = {"watch": "true", **self.filter.params()}
        if self.revision is None:
            self._snapshot = {}
        else:
            params["revision"] = self.revision
            self.resumes += 1
        return JOBS, params, {CLIENT_KEY_HEADER: self.key}

    def opened(self) -> None:
        self._attempts.opened()

    def refused(self, status: int, headers: Mapping[str, str], body: bytes) -> float:
        """The stream was answered with an error status: the seconds to wait before the next
        one. Raises the problem when trying again cannot help (400, 401, 404...)."""
        self._snapshot = None
        problem = problem_from(status, headers, body)
        if status == 410:
            self._expired(problem.detail)
            return self._attempts.refused(None)
        if status in RETRY_STATUSES:
            logger.info("watch refused, retrying: %s", problem, extra={"status": status})
            return self._attempts.refused(problem.retry_after)
        raise problem

    def ended(self, error: BaseException | None) -> float:
        """The stream ended, cleanly (its lifetime is over, the replica shuts down, an ERROR) or
        not (a reset, a read timeout): the seconds to wait before resuming."""
        if self._snapshot is not None:
            self._snapshot = None  # half an initial state is no state: the next stream starts again
        if error is not None:
            logger.info("watch stream failed, resuming: %s", error, extra={"revision": self.revision})
        return self._attempts.ended()

    def receive(self, line: bytes) -> list[WatchEvent]:
        """One event line: the events it means to the caller (none, one, or a relist's diff)."""
        event = load_event(line)
        type_, revision = event["type"], event["revision"]
        if type_ == "ERROR":
            self.broken = True
            self._expired(str(problem_from_object(event.get("object"))))
            return []
        if type_ == "BOOKMARK":
            if self._snapshot is not None:
                return self._synced(revision) if event.get("initial_events_end") else []
            self.revision = revision
            return [WatchEvent(EventType.BOOKMARK, revision, None)]
        if type_ not in ("ADDED", "MODIFIED", "DELETED"):
            return []  # a type of a later version of the service: nothing this client can apply
        summary = Summary.from_json(event.get("object"))
        self._attempts.fruitful()
        if self._snapshot is not None:
            if type_ != "ADDED":
                raise ProtocolError(f"a {type_} event inside an initial state")
            self._snapshot[summary.job_id] = summary
            return []
        self.revision = revision
        old = self.state.get(summary.job_id)
        if type_ == "DELETED":
            if old is None:
                return []
            del self.state[summary.job_id]
            return [WatchEvent(EventType.DELETED, revision, summary, old)]
        self.state[summary.job_id] = summary
        return [WatchEvent(EventType.MODIFIED if old is not None else EventType.ADDED, revision, summary, old)]

    def _synced(self, revision: str) -> list[WatchEvent]:
        snapshot, self._snapshot = self._snapshot or {}, None
        events = [] if self._quiet else diff(self.state, snapshot, revision)
        self._quiet = False
        self.state = snapshot
        self.revision = revision
        self.lists += 1
        return [*events, WatchEvent(EventType.BOOKMARK, revision, None, synced=True)]

    def _expired(self, why: str) -> None:
        logger.info("watch revision expired, listing again: %s", why, extra={"revision": self.revision})
        self.revision = None
        self.relists += 1


class JobReflector:
    """The state of one job's watch: the version the caller has. A stream resumes by that
    version's ETag (Last-Event-ID), which every replica shares: no 410, no relist, on any
    replica. The server's event types are relative to what it was told: they are translated
    to what the caller had (an ADDED after a resume is a MODIFIED to a caller that had an older
    version; a version or deletion it already has is dropped)."""

    def __init__(
        self, job_id: str, backoff: Backoff, *, since: Session | None = None, clock: Clock = time.monotonic
    ) -> None:
        if since is not None and since.job_id != job_id:
            raise ValueError(f"since= is a version of {since.job_id!r}, not of {job_id!r}")
        self.job_id = job_id
        self._path = job_path(job_id)
        self.session = since
        self.resumes = 0
        self.broken = False
        self._started = False
        self._attempts = Attempts(backoff, clock)

    def target(self) -> Target:
        self.broken = False
        if self._started:
            self.resumes += 1
        self._started = True
        # Not after a deletion: the server would send the DELETED again to a client naming a
        # version that is gone. Without it, a job that is still absent sends nothing.
        headers = {"Last-Event-ID": self.session.etag} if self.session is not None else {}
        return self._path, {"watch": "true"}, headers

    def opened(self) -> None:
        self._attempts.opened()

    def refused(self, status: int, headers: Mapping[str, str], body: bytes) -> float:
        problem = problem_from(status, headers, body)
        if status in RETRY_STATUSES:
            logger.info("job watch refused, retrying: %s", problem, extra={"status": status, "job_id": self.job_id})
            return self._attempts.refused(problem.retry_after)
        raise problem

    def ended(self, error: BaseException | None) -> float:
        if error is not None:
            logger.info("job watch stream failed, resuming: %s", error, extra={"job_id": self.job_id})
        return self._attempts.ended()

    def receive(self, line: bytes) -> list[JobEvent]:
        event = load_event(line)
        type_, revision = event["type"], event["revision"]
        if type_ == "ERROR":
            self.broken = True
            return []
        if type_ == "BOOKMARK":
            return [JobEvent(EventType.BOOKMARK, self.job_id, revision, None)]
        old = self.session
        if type_ == "DELETED":
            if old is None:
                return []
            self.session = None
            self._attempts.fruitful()
            return [JobEvent(EventType.DELETED, self.job_id, revision, old, old)]
        if type_ not in ("ADDED", "MODIFIED"):
            return []
        etag, document = event.get("etag"), event.get("object")
        if not isinstance(etag, str) or not isinstance(document, dict):
            raise ProtocolError(f"a {type_} event without an etag or a document")
        self._attempts.fruitful()
        if old is not None and old.etag == etag:
            return []
        new = Session(self.job_id, etag, document)
        self.session = new
        return [JobEvent(EventType.MODIFIED if old is not None else EventType.ADDED, self.job_id, revision, new, old)]
