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

from app import problems
from app.errors import ServiceError
from app.jobs import JobEndpoint, JobFastPath, JobListEndpoint, MissLoader
from app.metrics import Metrics, MetricsEndpoint
from app.middleware import BearerAuth, RequestObserver
from app.openapi import OpenAPIEndpoint
from app.probes import LivenessEndpoint, ReadinessEndpoint
from app.reconciler import Reconciler
from app.settings import Settings, load_settings
from app.store import SessionStore

logger = logging.getLogger("app")

LOADER_THREADS = 4
READ_METHODS = ["GET", "HEAD"]
STOP_TIMEOUT_S = 10.0

# Set by the server on SIGTERM: readiness turns 503 while requests are still served. A process
# has one set of signals, hence one event per process.
DRAINING = threading.Event()


class _JobPathConvertor(Convertor[str]):
    """Like Starlette's `path` (anything, slashes included) but never empty."""

    regex = ".+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("jobpath", _JobPathConvertor())


def create_app(settings: Settings | None = None, draining: threading.Event | None = None) -> Starlette:
    """Build the application. Without `settings`, read them from the environment (the factory
    uvicorn workers call)."""
    settings = settings if settings is not None else load_settings(os.environ)
    draining = draining if draining is not None else DRAINING
    metrics = Metrics(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        store = SessionStore(
            settings.sessions_dir,
            cache_max_entries=settings.cache_max_entries,
            cache_max_bytes=settings.cache_max_bytes,
            max_file_bytes=settings.max_file_bytes,
        )
        reconciler = Reconciler(store, settings)
        reconciler.on_change = metrics.observe_change
        reconciler.on_reload_lag = metrics.reload_lag.observe
        executor = ThreadPoolExecutor(LOADER_THREADS, thread_name_prefix="sessions-loader")
        loader = MissLoader(store, executor)
        # The warm-up runs in the reconciler thread: yield at once so that the port opens and
        # the probes answer (readiness 503 "warming") while it runs.
        reconciler.start()
        monitor = asyncio.create_task(metrics.monitor(store, reconciler, loader), name="sessions-monitor")
        logger.info(
            "serving sessions",
            extra={"folder": str(settings.sessions_dir), "watch": settings.watch, "pid": os.getpid()},
        )
        try:
            yield {
                "settings": settings,
                "store": store,
                "reconciler": reconciler,
                "loader": loader,
                "metrics": metrics,
                "draining": draining,
            }
        finally:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
            await asyncio.to_thread(reconciler.stop, STOP_TIMEOUT_S)
            executor.shutdown(wait=True, cancel_futures=True)
            logger.info("stopped")

    job = JobEndpoint()
    job_list = JobListEndpoint()
    live = LivenessEndpoint()
    routes = [
        # First, as the hottest route. Any non-empty rest of the path, slashes included, reaches
        # the id check (400, not 404); "/api/v2/jobs/" itself is the list.
        Route("/api/v2/jobs/{job_id:jobpath}", job),
        Route("/api/v2/jobs", job_list),
        Route("/api/v2/jobs/", job_list),
        # The rest are plain endpoints: only GET (and HEAD) may reach them, others are a 405.
        Route("/livez", live, methods=READ_METHODS),
        Route("/healthz", live, methods=READ_METHODS),
        Route("/readyz", ReadinessEndpoint(), methods=READ_METHODS),
        Route("/metrics", MetricsEndpoint(), methods=READ_METHODS),
        Route("/openapi.json", OpenAPIEndpoint(), methods=READ_METHODS),
    ]
    middleware = [Middleware(RequestObserver, metrics=metrics)]
    if settings.api_token is not None:
        middleware.append(Middleware(BearerAuth, token=settings.api_token))
    middleware.append(Middleware(JobFastPath, endpoint=job))
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
