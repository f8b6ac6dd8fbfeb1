"""The Starlette application: routes, middleware, and one lifespan that starts and stops
everything (the reconciler thread and its watcher, the miss-loader pool, the metrics monitor)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from app.api import problems
from app.api.cors import CorsPolicy
from app.api.jobs import ApiFastPath, JobEndpoint, JobListEndpoint
from app.api.middleware import BearerAuth, RequestObserver
from app.api.openapi import OpenAPIEndpoint
from app.api.page import PageEndpoint
from app.api.probes import LivenessEndpoint, ReadinessEndpoint
from app.api.problemtypes import ProblemTypeEndpoint
from app.api.routes import ROUTES
from app.changes.hub import ChangeHub
from app.errors import ServiceError
from app.lifecycle import DRAINING, SHUTDOWN, Shutdown
from app.ops.metrics import Metrics, MetricsEndpoint
from app.settings import Settings
from app.store.loader import MissLoader
from app.store.reconciler import Reconciler
from app.store.store import SessionStore
from app.store.watchmode import plan

logger = logging.getLogger("app")

LOADER_THREADS = 4
WORK_THREADS = 2
READ_METHODS = ["GET", "HEAD"]
STOP_TIMEOUT_S = 10.0

__all__ = ["DRAINING", "create_app"]


class _JobPathConvertor(Convertor[str]):
    """Like Starlette's `path` (anything, slashes included) but never empty."""

    regex = ".+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("jobpath", _JobPathConvertor())


def create_app(settings: Settings, shutdown: Shutdown | None = None) -> Starlette:
    """Build the application for `settings`, which the entry point read."""
    shutdown = shutdown if shutdown is not None else SHUTDOWN
    draining: threading.Event = shutdown.draining
    # Decided once, before anything watches: reads /proc, never the folder's own mount.
    watch = plan(settings.watch, settings.sessions_dir)
    metrics = Metrics(settings, watch)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        store = SessionStore(
            settings.sessions_dir,
            cache_max_entries=settings.cache_max_entries,
            cache_max_bytes=settings.cache_max_bytes,
            max_file_bytes=settings.max_file_bytes,
            history=settings.history,
            finished_statuses=settings.finished_statuses,
        )
        reconciler = Reconciler(store, settings, watch)
        reconciler.on_reload_lag = metrics.reload_lag.observe
        executor = ThreadPoolExecutor(LOADER_THREADS, thread_name_prefix="sessions-loader")
        # Work on memory (watch snapshots) in a pool of its own: reads hung on a file server
        # that went away cannot hold it up.
        work_executor = ThreadPoolExecutor(WORK_THREADS, thread_name_prefix="sessions-work")
        store.forced_reads = reconciler.network
        loader = MissLoader(store, executor, work_executor)
        hub = ChangeHub(store, loader, settings, problems.error_body)
        hub.start()
        reconciler.on_applied = hub.notify  # once per batch of changes, from its thread
        forget_drain = shutdown.on_stop(hub.drain)
        # The warm-up runs in the reconciler thread: yield at once so that the port opens and
        # the probes answer (readiness 503 "warming") while it runs.
        reconciler.start()
        metrics.attach(store, reconciler, loader, hub)
        monitor = asyncio.create_task(metrics.monitor(), name="sessions-monitor")
        logger.info(
            "serving sessions",
            extra={
                "folder": str(settings.sessions_dir),
                "watch": watch.mode,
                "watch_setting": watch.setting,
                "filesystem": watch.filesystem,
                "watch_reason": watch.reason,
                "pid": os.getpid(),
            },
        )
        if watch.mode == "poll" and watch.setting == "auto":
            logger.info(
                "polling the sessions folder: native events miss other machines' writes on this filesystem",
                extra={"folder": str(settings.sessions_dir), "filesystem": watch.filesystem},
            )
        try:
            yield {
                "settings": settings,
                "store": store,
                "reconciler": reconciler,
                "loader": loader,
                "metrics": metrics,
                "draining": draining,
                "hub": hub,
            }
        finally:
            forget_drain()
            await hub.close()
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
            await asyncio.to_thread(reconciler.stop, STOP_TIMEOUT_S)
            work_executor.shutdown(wait=True, cancel_futures=True)
            # Not waiting for reads that may hang on a file server gone away: they are daemon-
            # like work whose result nobody needs any more.
            executor.shutdown(wait=reconciler.folder_state() == "ok", cancel_futures=True)
            logger.info("stopped")

    job = JobEndpoint()
    job_list = JobListEndpoint()
    endpoints: dict[str, Any] = {
        "job": job,
        "jobs": job_list,
        "live": LivenessEndpoint(),
        "ready": ReadinessEndpoint(),
        "metrics": MetricsEndpoint(),
        "openapi": OpenAPIEndpoint(token_required=settings.api_token is not None),
        "problem_type": ProblemTypeEndpoint(),
        "page": PageEndpoint(),
    }
    routes = [
        # Plain endpoints get only GET (and HEAD); others are a 405. The API's endpoints check
        # methods themselves (the fast path reaches them around the router).
        Route(path, endpoints[spec.endpoint], methods=READ_METHODS if spec.plain else None)
        for spec in ROUTES
        for path in spec.paths
    ]
    # CORS is applied by the observer, outside the token check: a preflight carries no
    # credentials, and a 401 must reach the page with the headers that let it read it.
    cors = CorsPolicy(settings.cors_origins) if settings.cors_origins else None
    middleware = [Middleware(RequestObserver, metrics=metrics, cors=cors)]
    if settings.api_token is not None:
        middleware.append(Middleware(BearerAuth, token=settings.api_token))
    middleware.append(Middleware(ApiFastPath, endpoints=endpoints))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            ServiceError: problems.service_error,
            HTTPException: problems.http_error,
            Exception: problems.server_error,
        },
    )
    app.router.redirect_slashes = False
    return app
