"""Prometheus metrics as one custom collector: at each scrape it reads the components' own
plain counters (the store's, the reconciler's, the watcher's, the loader's, the hub's, the log
writer's) and the few this module keeps itself (request latencies, event-loop and reload lag).

Nothing is published ahead of a scrape: the request path and the reconciler do plain
arithmetic, and prometheus-client only sees numbers when Prometheus asks. Histograms are kept
as per-bucket counts here and exposed as cumulative buckets.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, cast

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client import utils as prometheus_utils
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import Receive, Scope, Send

from app import __version__
from app.changes.events import TYPES as EVENT_TYPES
from app.changes.hub import LAG_BUCKETS as STREAM_LAG_BUCKETS
from app.changes.streams import End
from app.ops import logwriter
from app.store.store import Change

if TYPE_CHECKING:
    from app.changes.hub import ChangeHub
    from app.settings import Settings
    from app.store.loader import MissLoader
    from app.store.reconciler import Reconciler
    from app.store.store import SessionStore
    from app.store.watchmode import WatchPlan

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
RELOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MONITOR_INTERVAL_S = 1.0  # event-loop lag sampled once a second (idle wake-ups cost)

_STREAM_KINDS = ("collection", "job")
_WAIT_ENDS = ("changed", "timeout", "drain", "client")
# Every label value of the stream counters, so that rates and alerts see zeros rather than
# absent series.
_EVENT_LABELS = [(kind, type_.decode()) for kind in _STREAM_KINDS for type_ in EVENT_TYPES]
_END_LABELS = [(kind, end.value) for kind in _STREAM_KINDS for end in End] + [("wait", r) for r in _WAIT_ENDS]
_CHANGES = [change.value for change in Change]
# How prometheus-client writes a bucket's bound (`le`), as its own histograms do.
_go_float = cast(Callable[[float], str], prometheus_utils.floatToGoString)


class Buckets:
    """A histogram as plain numbers: observations per bucket (not cumulative) and their sum.
    One writer thread at a time; a scrape reads it as it is."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = (*bounds, float("inf"))
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # value <= bound: Prometheus's `le`
        self.sum += value


def cumulative(bounds: Sequence[float], counts: Iterable[int]) -> list[tuple[str, float]]:
    """(le, observations at or below it) for each bound, +Inf last: a histogram's buckets."""
    return [(_go_float(bound), total) for bound, total in zip(bounds, itertools.accumulate(counts), strict=True)]


class Metrics:
    """What the service exposes on /metrics. Built with the application; the components it
    reads are handed over by `attach` once the lifespan has built them."""

    def __init__(self, settings: Settings | None = None, watch: WatchPlan | None = None) -> None:
        self.settings = settings
        self.watch = watch
        self.created = time.time()  # the counters of the components start with the app
        # (route, method, status) -> latency buckets and when the series first appeared.
        self.requests: dict[tuple[str, str, int], Buckets] = {}
        self.requests_created: dict[tuple[str, str, int], float] = {}
        self.loop_lag = Buckets(LOOP_LAG_BUCKETS)
        self.reload_lag = Buckets(RELOAD_BUCKETS)  # observed by the reconciler's thread
        self.store: SessionStore | None = None
        self.reconciler: Reconciler | None = None
        self.loader: MissLoader | None = None
        self.hub: ChangeHub | None = None
        # A registry per app, so that apps built in one process (tests) do not collide.
        self.registry = CollectorRegistry()
        # process_start_time_seconds (restarts), memory, CPU, file descriptors.
        ProcessCollector(registry=self.registry)
        self.registry.register(ServiceCollector(self))

    def attach(self, store: SessionStore, reconciler: Reconciler, loader: MissLoader, hub: ChangeHub) -> None:
        self.store, self.reconciler, self.loader, self.hub = store, reconciler, loader, hub

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count and time one request: plain arithmetic on the event loop thread (going through
        prometheus-client's locks on every request would cost a visible share of a cache hit)."""
        key = (route, method, status)
        cell = self.requests.get(key)
        if cell is None:
            cell = self.requests[key] = Buckets(LATENCY_BUCKETS)
            self.requests_created[key] = time.time()
        cell.counts[bisect_left(cell.bounds, seconds)] += 1
        cell.sum += seconds

    async def monitor(self) -> None:
        """Measure event-loop lag, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + MONITOR_INTERVAL_S
            await asyncio.sleep(MONITOR_INTERVAL_S)
            self.loop_lag.observe(max(0.0, loop.time() - expected))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ServiceCollector(Collector):
    """Reads the figures at scrape time (on the event loop, where /metrics is served)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        # The running version as a label (value 1), as exporters do: dashboards and alerts join
        # on it to tell which build a replica runs during a rolling update.
        build = GaugeMetricFamily(
            "sessions_build_info", "1, labelled with the version this process runs.", labels=["version"]
        )
        build.add_metric([__version__], 1)
        yield build
        yield from self._requests()
        if metrics.store is not None:
            yield from self._store(metrics.store)
        if metrics.loader is not None:
            yield self._counter(
                "sessions_cache_loads",
                "File reads for cache misses (one per id however many wait).",
                metrics.loader.loads,
            )
            yield self._counter(
                "sessions_load_unavailable",
                "Cache misses answered 503 because the folder did not answer in time or too many reads waited.",
                metrics.loader.timeouts,
            )
        if metrics.reconciler is not None:
            yield from self._reconciler(metrics.reconciler)
        yield self._counter(
            "sessions_log_lines_dropped",
            "Log lines dropped because stdout was not draining (its buffer was full).",
            logwriter.dropped_lines(),
        )
        yield self._histogram(
            "sessions_event_loop_lag_seconds",
            "How late the event loop ran a timer: time requests wait behind other work.",
            metrics.loop_lag.bounds,
            metrics.loop_lag.counts,
            metrics.loop_lag.sum,
        )
        yield from self._streams(metrics.hub)

    def _counter(self, name: str, documentation: str, value: float) -> CounterMetricFamily:
        return CounterMetricFamily(name, documentation, value, created=self.metrics.created)

    @staticmethod
    def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, documentation, value)

    def _histogram(
        self, name: str, documentation: str, bounds: Sequence[float], counts: Iterable[int], total: float
    ) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation)
        family.add_metric([], cumulative(bounds, counts), total)
        # add_metric takes no creation time for a histogram: its sample, as prometheus-client's
        # own histograms expose it.
        family.add_sample(f"{name}_created", {}, self.metrics.created)
        return family

    def _requests(self) -> Iterator[Metric]:
        labels = ["route", "method", "status"]
        count = CounterMetricFamily("sessions_http_requests", "HTTP requests answered.", labels=labels)
        latency = HistogramMetricFamily(
            "sessions_http_request_duration_seconds", "Time to answer an HTTP request.", labels=labels
        )
        created = self.metrics.requests_created
        for key, cell in list(self.metrics.requests.items()):
            values = [key[0], key[1], str(key[2])]
            buckets = cumulative(cell.bounds, cell.counts)
            count.add_metric(values, buckets[-1][1], created=created[key])
            latency.add_metric(values, buckets, cell.sum)
            latency.add_sample(f"{latency.name}_created", dict(zip(labels, values, strict=True)), created[key])
        yield count
        yield latency

    def _store(self, store: SessionStore) -> Iterator[Metric]:
        stats = store.stats()
        yield self._gauge("sessions_cache_entries", "Documents in the LRU cache.", stats["cache_entries"])
        yield self._gauge("sessions_cache_bytes", "Bytes of documents in the LRU cache.", stats["cache_bytes"])
        yield self._counter("sessions_cache_hits", "Reads served from the cache.", stats["cache_hits"])
        yield self._counter(
            "sessions_cache_misses", "Reads of an evicted session (loaded from disk).", stats["cache_misses"]
        )
        yield self._counter("sessions_cache_evictions", "Documents evicted from the cache.", stats["cache_evictions"])
        yield self._gauge("sessions_indexed", "Valid sessions indexed.", stats["sessions"])
        yield self._gauge("sessions_invalid_files", "Session files that are invalid now.", stats["invalid_files"])
        yield self._gauge("sessions_store_revision", "Changes applied to the store.", stats["revision"])

    def _reconciler(self, reconciler: Reconciler) -> Iterator[Metric]:
        stats = reconciler.stats
        watcher = reconciler.watcher
        yield self._gauge("sessions_ready", "1 once the warm-up is done.", 1 if reconciler.ready.is_set() else 0)
        yield self._gauge(
            "sessions_warmup_duration_seconds", "Time the start-up warm-up took.", stats.warmup_seconds or 0.0
        )
        yield self._gauge(
            "sessions_warm_start_sessions",
            "Sessions the warm-up took from the warm-start file (network filesystems; docs/network-volumes.md).",
            stats.warm_start_sessions,
        )
        writes = CounterMetricFamily(
            "sessions_warm_start_writes",
            "Warm-start files this process wrote, failed to write, or left to a newer one (outcome).",
            labels=["outcome"],
        )
        for outcome in ("written", "failed", "skipped"):
            writes.add_metric([outcome], stats.warm_start_writes.get(outcome, 0))
        yield writes
        yield self._counter(
            "sessions_watcher_events",
            "File events reported by the native watcher.",
            watcher.events if watcher is not None else 0,
        )
        yield self._gauge(
            "sessions_watcher_up",
            "1 while the native watcher runs (0 in poll and off modes, or while it is down).",
            1 if watcher is not None and watcher.healthy.is_set() else 0,
        )
        # sessions_watcher_up is 0 by design in poll and off modes: alerts tell "down" from "not
        # used" by this one series: the mode this process runs in, SESSIONS_WATCH as set, the
        # folder's filesystem type, and why the mode was chosen (docs/network-volumes.md).
        mode = GaugeMetricFamily(
            "sessions_watch_mode",
            "1 for the watch mode this process runs in (native, poll or off) and why.",
            labels=["mode", "setting", "filesystem", "reason"],
        )
        watch = self.metrics.watch
        if watch is not None:
            mode.add_metric([watch.mode, watch.setting, watch.filesystem, watch.reason], 1)
        yield mode
        yield self._counter(
            "sessions_watcher_restarts",
            "Native watcher restarts after a fault.",
            watcher.restarts if watcher is not None else 0,
        )
        reader = reconciler.announcements
        read = reader.stats if reader is not None else None
        yield self._counter(
            "sessions_announcements_read",
            "Job ids read from writers' announcement journals (poll mode; docs/network-volumes.md).",
            read.announcements if read is not None else 0,
        )
        yield self._gauge(
            "sessions_announcement_journals",
            "Announcement journals this process follows.",
            read.journals if read is not None else 0,
        )
        yield self._counter(
            "sessions_announcement_malformed_lines",
            "Lines of announcement journals that were not job ids (ignored).",
            read.malformed if read is not None else 0,
        )
        changes = CounterMetricFamily("sessions_changes", "Changes applied to the store, by kind.", labels=["change"])
        for change in _CHANGES:
            count = stats.changes.get(change)
            if count is not None:  # a kind appears once it has happened, as it always did
                changes.add_metric([change], count, created=self.metrics.created)
        yield changes
        lag = self.metrics.reload_lag
        yield self._histogram(
            "sessions_reload_lag_seconds",
            "From a file's modification to its new version being served.",
            lag.bounds,
            lag.counts,
            lag.sum,
        )
        yield self._counter("sessions_rescans", "Full rescans of the folder.", stats.rescans)
        yield self._counter("sessions_rescan_duration_seconds", "Time spent in rescans.", stats.rescan_seconds)
        yield self._counter(
            "sessions_transient_read_errors",
            "Reads that failed for lack of resources and were retried.",
            stats.transient_errors,
        )
        yield self._gauge(
            "sessions_folder_up",
            "1 while the sessions folder answers; 0 while it cannot be listed or does not answer "
            "(a file server gone away: what is in memory is still served).",
            1 if reconciler.folder_state() == "ok" else 0,
        )
        poller = reconciler.poller
        yield self._gauge(
            "sessions_poll_hot_files",
            "Files polled every period (unfinished, invalid, racy or recently changed sessions).",
            len(poller.hot) if poller is not None else 0,
        )
        yield self._counter(
            "sessions_poll_probes", "Stats of hot files by the poller.", poller.stats.probes if poller else 0
        )
        yield self._counter(
            "sessions_poll_listings",
            "Listings of the folder by the poller (when the folder changed).",
            poller.stats.listings if poller is not None else 0,
        )

    def _streams(self, hub: ChangeHub | None) -> Iterator[Metric]:
        created = self.metrics.created
        opened = GaugeMetricFamily(
            "sessions_streams_open",
            "Open streams by kind: collection and job watches, and waiting long polls (wait).",
            labels=["kind"],
        )
        for kind in (*_STREAM_KINDS, "wait"):
            opened.add_metric([kind], hub.stats.open.get(kind, 0) if hub is not None else 0)
        yield opened
        settings = self.metrics.settings
        yield self._gauge(
            "sessions_streams_limit",
            "SESSIONS_MAX_STREAMS: streams and waits a process serves at once.",
            settings.max_streams if settings is not None else 0,
        )
        yield self._counter(
            "sessions_streams_rejected",
            "Streams and waits refused with a 503 at the limit.",
            hub.stats.rejected if hub is not None else 0,
        )
        sent = CounterMetricFamily(
            "sessions_stream_events", "Events written to streams, by kind and type.", labels=["kind", "type"]
        )
        for key in _EVENT_LABELS:
            sent.add_metric(list(key), hub.stats.events.get(key, 0) if hub is not None else 0, created=created)
        yield sent
        ended = CounterMetricFamily(
            "sessions_streams_ended", "Streams and waits ended, by kind and reason.", labels=["kind", "reason"]
        )
        for key in _END_LABELS:
            ended.add_metric(list(key), hub.stats.ended.get(key, 0) if hub is not None else 0, created=created)
        yield ended
        yield self._histogram(
            "sessions_stream_event_lag_seconds",
            "From a file's change to its event being handed to the streams that want it.",
            (*STREAM_LAG_BUCKETS, float("inf")),
            hub.stats.lag_buckets if hub is not None else [0] * (len(STREAM_LAG_BUCKETS) + 1),
            hub.stats.lag_sum if hub is not None else 0.0,
        )


class MetricsEndpoint:
    """GET /metrics"""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics: Metrics = scope["state"]["metrics"]
        body = metrics.exposition()
        headers = [
            (b"content-type", CONTENT_TYPE_LATEST.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
