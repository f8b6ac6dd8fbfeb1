"""Running the app under uvicorn: the settings production needs, and the shutdown sequence.

On SIGTERM (or SIGINT): readiness turns 503 at once while requests are still served for
SESSIONS_SHUTDOWN_DELAY_S (so the load balancer stops routing here first), then uvicorn stops
accepting, lets requests in flight finish (at most SESSIONS_GRACEFUL_TIMEOUT_S), runs the
lifespan shutdown (watcher and threads stopped and joined) and the process exits with status 0.
A second signal skips the delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
import sys
import time
from types import FrameType
from typing import Any

import uvicorn

from app.api.application import create_app
from app.lifecycle import SHUTDOWN, Shutdown
from app.ops import logwriter
from app.server.httpprotocol import BoundedHttpProtocol, close_stalled_requests
from app.settings import Settings

logger = logging.getLogger("app.server")

SWITCH_INTERVAL_S = 0.001
# While uvicorn waits for responses to finish at shutdown, a client that has stopped reading
# would hold the process until the graceful timeout: let it go after this long without progress.
SHUTDOWN_STALL_S = 1.0
# uvicorn's main loop ticks ten times a second; once a second does its work here (the date
# header, the sweep of stalled requests), with a signal or the drain deadline waking it at once:
# an idle process wakes up less, and idle wake-ups are most of an idle process's CPU.
TICK_S = 1.0


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, shutdown_delay_s: float, shutdown: Shutdown) -> None:
        super().__init__(config)
        self._shutdown_delay_s = shutdown_delay_s
        self._shutdown = shutdown
        self._draining = shutdown.draining
        self._drain_deadline: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = wake = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000  # uvicorn's on_tick works at multiples of 10 ticks
            timeout = TICK_S
            if self._drain_deadline is not None:
                timeout = min(timeout, max(0.0, self._drain_deadline - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
            wake.clear()

    def _wake_main_loop(self) -> None:
        if self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                self._loop.call_soon_threadsafe(self._wake.set)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Unlike uvicorn's own handler, the signal is not recorded for re-raising after the
        # shutdown: a graceful stop on SIGTERM is a success and exits with status 0.
        if self._drain_deadline is not None or self._shutdown_delay_s == 0:
            self._draining.set()
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True
            self._wake_main_loop()
            return
        self._draining.set()
        self._drain_deadline = time.monotonic() + self._shutdown_delay_s
        self._wake_main_loop()

    async def on_tick(self, counter: int) -> bool:
        if self._drain_deadline is not None and time.monotonic() >= self._drain_deadline:
            self.should_exit = True
        if counter % 10 == 0:
            close_stalled_requests(
                self.server_state.connections, asyncio.get_running_loop().time(), self.config.timeout_keep_alive
            )
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Streams end and waiting long polls answer now, so that uvicorn's wait for requests in
        # flight is short; clients resume on another replica.
        self._shutdown.stop()
        sweeper = asyncio.create_task(self._let_go_of_stalled_readers())
        try:
            await super().shutdown(sockets)
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def _let_go_of_stalled_readers(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = min(SHUTDOWN_STALL_S, self.config.timeout_keep_alive)
        while True:
            await asyncio.sleep(0.1)
            close_stalled_requests(self.server_state.connections, loop.time(), timeout)


def _config(settings: Settings, app: Any, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=BoundedHttpProtocol,
        lifespan="on",
        log_config=None,  # app.ops.logs configured logging already
        access_log=False,  # app.access writes one structured line per request
        server_header=False,
        proxy_headers=False,
        # Longer than the load balancer's idle timeout, or it reuses a closed connection: 502.
        # A request must also arrive whole within it (app.server.httpprotocol). uvicorn types these
        # two as int but uses them as timeouts, where a fraction of a second works.
        timeout_keep_alive=settings.keepalive_s,  # type: ignore[arg-type]
        # Without it uvicorn waits forever for requests in flight at shutdown.
        timeout_graceful_shutdown=settings.graceful_timeout_s,  # type: ignore[arg-type]
    )


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard limit, as nginx's worker_rlimit_nofile
    does: every stream holds a socket, and the default soft limit (often 1024) would cap a
    replica at about a thousand streams. Returns (soft, hard) as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open-file limit", extra={"soft": soft, "hard": hard, "error": str(exc)})
    return soft, hard


def run(settings: Settings, host: str, port: int) -> None:
    """Serve in this process until a signal stops it. One process per container: several
    processes on one machine are replicas behind the load balancer (`make cluster`), whose
    hashing keeps each job's requests, and a stream's resumes, on the replica that holds its
    history."""
    soft, hard = raise_open_file_limit()
    logger.info("open-file limit", extra={"soft": soft, "hard": hard, "max_streams": settings.max_streams})
    # The event loop shares the GIL with the reconciler's thread; by default a thread that wants
    # the GIL may wait 5 ms for it, several times per request. 1 ms keeps requests fast while a
    # warm-up or rescan runs, for a little more switching.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    config = _config(settings, create_app(settings, SHUTDOWN), host, port)
    DrainingServer(config, settings.shutdown_delay_s, SHUTDOWN).run()
    # The access lines of the requests answered while draining, and the shutdown's lines, may
    # still be queued: written before the process exits.
    logwriter.close()
