"""Prometheus metrics: request figures observed by middleware, store figures refreshed from the
store's counters by a monitor task (and just before every scrape), event-loop lag measured by it.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from starlette.types import Receive, Scope, Send

from app.changes.events import TYPES as EVENT_TYPES
from app.changes.hub import LAG_BUCKETS as _STREAM_LAG_BUCKETS
from app.changes.streams import End
from app.ops import logwriter

if TYPE_CHECKING:
    from app.changes.hub import ChangeHub
    from app.settings import Settings
    from app.store.loader import MissLoader
    from app.store.reconciler import Reconciler
    from app.store.store import Change, SessionStore
    from app.store.watchmode import WatchPlan

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_RELOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MONITOR_INTERVAL_S = 1.0  # event-loop lag sampled, figures published: once a second (idle wake-ups cost)


_STREAM_KINDS = ("collection", "job")
_WAIT_ENDS = ("changed", "timeout", "drain", "client")


class Metrics:
    def __init__(self, settings: Settings | None = None, watch: WatchPlan | None = None) -> None:
        # A registry per app, so that apps built in one process (tests) do not collide.
        self.registry = registry = CollectorRegistry()
        # process_start_time_seconds (restarts), memory, CPU, file descriptors.
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "sessions_http_requests", "HTTP requests answered.", ["route", "method", "status"], registry=registry
        )
        self.latency = Histogram(
            "sessions_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.cache_entries = Gauge("sessions_cache_entries", "Documents in the LRU cache.", registry=registry)
        self.cache_bytes = Gauge(
            "sessions_cache_bytes",
            "Bytes of documents in the LRU cache.",
            registry=registry,
        )
        self.cache_hits = Counter("sessions_cache_hits", "Reads served from the cache.", registry=registry)
        self.cache_misses = Counter(
            "sessions_cache_misses", "Reads of an evicted session (loaded from disk).", registry=registry
        )
        self.cache_evictions = Counter(
            "sessions_cache_evictions", "Documents evicted from the cache.", registry=registry
        )
        self.cache_loads = Counter(
            "sessions_cache_loads", "File reads for cache misses (one per id however many wait).", registry=registry
        )
        self.sessions = Gauge("sessions_indexed", "Valid sessions indexed.", registry=registry)
        self.invalid_files = Gauge(
            "sessions_invalid_files",
            "Session files that are invalid now.",
            registry=registry,
        )
        self.revision = Gauge("sessions_store_revision", "Changes applied to the store.", registry=registry)
        self.ready = Gauge("sessions_ready", "1 once the warm-up is done.", registry=registry)
        self.warmup = Gauge(
            "sessions_warmup_duration_seconds",
            "Time the start-up warm-up took.",
            registry=registry,
        )
        self.watcher_events = Counter(
            "sessions_watcher_events", "File events reported by the native watcher.", registry=registry
        )
        self.watcher_up = Gauge(
            "sessions_watcher_up",
            "1 while the native watcher runs (0 in poll and off modes, or while it is down).",
            registry=registry,
        )
        # sessions_watcher_up is 0 by design in poll and off modes: alerts tell "down" from "not
        # used" by this (deploy/prometheus/alerts.yaml).
        # One series: the mode this process runs in (native, poll or off), SESSIONS_WATCH as set,
        # the folder's filesystem type, and why the mode was chosen (docs/network-volumes.md).
        self.watch_mode = Gauge(
            "sessions_watch_mode",
            "1 for the watch mode this process runs in (native, poll or off) and why.",
            ["mode", "setting", "filesystem", "reason"],
            registry=registry,
        )
        if watch is not None:
            self.watch_mode.labels(watch.mode, watch.setting, watch.filesystem, watch.reason).set(1)
        self.watcher_restarts = Counter(
            "sessions_watcher_restarts", "Native watcher restarts after a fault.", registry=registry
        )
        self.changes = Counter(
            "sessions_changes", "Changes applied to the store, by kind.", ["change"], registry=registry
        )
        self.reload_lag = Histogram(
            "sessions_reload_lag_seconds",
            "From a file's modification to its new version being served.",
            buckets=_RELOAD_BUCKETS,
            registry=registry,
        )
        self.rescans = Counter("sessions_rescans", "Full rescans of the folder.", registry=registry)
        self.rescan_seconds = Counter("sessions_rescan_duration_seconds", "Time spent in rescans.", registry=registry)
        self.transient_errors = Counter(
            "sessions_transient_read_errors",
            "Reads that failed for lack of resources and were retried.",
            registry=registry,
        )
        self.log_lines_dropped = Counter(
            "sessions_log_lines_dropped",
            "Log lines dropped because stdout was not draining (its buffer was full).",
            registry=registry,
        )
        self.loop_lag = Histogram(
            "sessions_event_loop_lag_seconds",
            "How late the event loop ran a timer: time requests wait behind other work.",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        # The change stream (SPEC §6). Every label value is created up front, so that rates and
        # alerts see zeros rather than absent series.
        self.streams_open = Gauge(
            "sessions_streams_open",
            "Open streams by kind: collection and job watches, and waiting long polls (wait).",
            ["kind"],
            registry=registry,
        )
        self.streams_limit = Gauge(
            "sessions_streams_limit",
            "SESSIONS_MAX_STREAMS: streams and waits a process serves at once.",
            registry=registry,
        )
        self.streams_rejected = Counter(
            "sessions_streams_rejected", "Streams and waits refused with a 503 at the limit.", registry=registry
        )
        self.stream_events = Counter(
            "sessions_stream_events",
            "Events written to streams, by kind and type.",
            ["kind", "type"],
            registry=registry,
        )
        self.streams_ended = Counter(
            "sessions_streams_ended",
            "Streams and waits ended, by kind and reason.",
            ["kind", "reason"],
            registry=registry,
        )
        self.stream_lag = Histogram(
            "sessions_stream_event_lag_seconds",
            "From a file's change to its event being handed to the streams that want it.",
            buckets=_STREAM_LAG_BUCKETS,
            registry=registry,
        )
        for kind in (*_STREAM_KINDS, "wait"):
            self.streams_open.labels(kind)
        for kind in _STREAM_KINDS:
            for type_ in EVENT_TYPES:
                self.stream_events.labels(kind, type_.decode())
            for end in End:
                self.streams_ended.labels(kind, end.value)
        for reason in _WAIT_ENDS:
            self.streams_ended.labels("wait", reason)
        if settings is not None:
            self.streams_limit.set(settings.max_streams)
        self._seen: dict[str, float] = {}
        self._seen_labelled: dict[tuple[str, ...], int] = {}
        self._upper_bounds = [*_LATENCY_BUCKETS, float("inf")]
        self._pending_requests: dict[tuple[str, str, int], list[Any]] = {}

    # --- observations ------------------------------------------------------------------------------

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count and time one request: plain arithmetic on the event loop thread. Publishing
        each observation through prometheus-client's locks cost a third of a cache hit's time
        (measured: 20k vs 25k requests/s), so they are published in bulk by `refresh`."""
        key = (route, method, status)
        cell = self._pending_requests.get(key)
        if cell is None:
            cell = self._pending_requests[key] = [0, 0.0, [0] * len(self._upper_bounds)]
        cell[0] += 1
        cell[1] += seconds
        cell[2][bisect_left(self._upper_bounds, seconds)] += 1

    def _publish_requests(self) -> None:
        pending, self._pending_requests = self._pending_requests, {}
        for (route, method, status), (count, total, buckets) in pending.items():
            labels = (route, method, str(status))
            self.requests.labels(*labels).inc(count)
            child = self.latency.labels(*labels)
            # prometheus-client has no bulk observe: add to the child's sum and bucket values as
            # its observe() does (tests/test_metrics.py checks the exposition).
            child._sum.inc(total)
            for index, observations in enumerate(buckets):
                if observations:
                    child._buckets[index].inc(observations)

    def observe_change(self, change: Change, job_id: str) -> None:
        self.changes.labels(change.value).inc()

    def _advance(self, counter: Counter, name: str, value: float) -> None:
        delta = value - self._seen.get(name, 0.0)
        if delta > 0:
            counter.inc(delta)
        self._seen[name] = value

    def _advance_labelled(self, counter: Counter, name: str, values: dict[tuple[str, str], int]) -> None:
        for labels, value in values.items():
            key = (name, *labels)
            delta = value - self._seen_labelled.get(key, 0)
            if delta > 0:
                counter.labels(*labels).inc(delta)
            self._seen_labelled[key] = value

    def _publish_streams(self, hub: ChangeHub) -> None:
        stats = hub.stats
        for kind, count in stats.open.items():
            self.streams_open.labels(kind).set(count)
        self._advance(self.streams_rejected, "streams_rejected", stats.rejected)
        self._advance_labelled(self.stream_events, "events", stats.events)
        self._advance_labelled(self.streams_ended, "ended", stats.ended)
        # The lag is observed in buckets on the loop (one per event fanned out); publish the
        # new observations as `_publish_requests` does.
        buckets, total = stats.lag_buckets, stats.lag_sum
        stats.lag_buckets, stats.lag_sum = [0] * len(buckets), 0.0
        if any(buckets):
            self.stream_lag._sum.inc(total)
            for index, observations in enumerate(buckets):
                if observations:
                    self.stream_lag._buckets[index].inc(observations)

    def refresh(
        self, store: SessionStore, reconciler: Reconciler, loader: MissLoader, hub: ChangeHub | None = None
    ) -> None:
        """Bring the figures up to date (on the event loop: no concurrent refresh)."""
        self._publish_requests()
        if hub is not None:
            self._publish_streams(hub)
        stats = store.stats()
        self.cache_entries.set(stats["cache_entries"])
        self.cache_bytes.set(stats["cache_bytes"])
        self.sessions.set(stats["sessions"])
        self.invalid_files.set(stats["invalid_files"])
        self.revision.set(stats["revision"])
        self._advance(self.cache_hits, "hits", stats["cache_hits"])
        self._advance(self.cache_misses, "misses", stats["cache_misses"])
        self._advance(self.cache_evictions, "evictions", stats["cache_evictions"])
        self._advance(self.cache_loads, "loads", loader.loads)
        self._advance(self.rescans, "rescans", reconciler.stats.rescans)
        self._advance(self.rescan_seconds, "rescan_seconds", reconciler.stats.rescan_seconds)
        self._advance(self.transient_errors, "transient", reconciler.stats.transient_errors)
        self._advance(self.log_lines_dropped, "log_lines_dropped", logwriter.dropped_lines())
        self.ready.set(1 if reconciler.ready.is_set() else 0)
        if reconciler.stats.warmup_seconds is not None:
            self.warmup.set(reconciler.stats.warmup_seconds)
        watcher = reconciler.watcher
        self.watcher_up.set(1 if watcher is not None and watcher.healthy.is_set() else 0)
        if watcher is not None:
            self._advance(self.watcher_events, "events", watcher.events)
            self._advance(self.watcher_restarts, "restarts", watcher.restarts)

    async def monitor(self, store: SessionStore, reconciler: Reconciler, loader: MissLoader, hub: ChangeHub) -> None:
        """Measure event-loop lag and refresh store figures, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + MONITOR_INTERVAL_S
            await asyncio.sleep(MONITOR_INTERVAL_S)
            self.loop_lag.observe(max(0.0, loop.time() - expected))
            self.refresh(store, reconciler, loader, hub)

    # --- exposition ----------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsEndpoint:
    """GET /metrics"""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["state"]
        metrics: Metrics = state["metrics"]
        metrics.refresh(state["store"], state["reconciler"], state["loader"], state["hub"])
        body = metrics.exposition()
        headers = [
            (b"content-type", CONTENT_TYPE_LATEST.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
