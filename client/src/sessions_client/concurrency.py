"""The primitives the client's I/O code waits with, each in its async and its sync form side by
side: the only module where asyncio and threading meet the client.

The I/O code is written once, async (sessions_client._async), naming the first of each pair;
client/scripts/unasync.py writes the sync code (sessions_client._sync) from it by renaming
`AsyncX` to `X` and `async_x` to `x`, so each pair below keeps that naming."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import httpx

AsyncEvent = asyncio.Event
Event = threading.Event

async_sleep = asyncio.sleep
sleep = time.sleep


async def async_wait_event(event: asyncio.Event, timeout: float | None) -> None:
    """Wait until `event` is set, at most `timeout` seconds (None: for ever)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


def wait_event(event: threading.Event, timeout: float | None) -> None:
    event.wait(timeout)


async def async_settle(result: object) -> None:
    """An async mirror's callbacks may be coroutine functions: await what one returned."""
    if inspect.isawaitable(result):
        await result


def settle(result: object) -> None:
    """A sync mirror's callbacks are plain functions: what one returns is not used."""


class Stop(threading.Event):
    """Stops a sync watch (or a Mirror) from another thread at once: `set()` also shuts the
    socket of the stream being read, which a blocking read would otherwise hold until the next
    event (up to SESSIONS_BOOKMARK_S) or its read timeout. A plain threading.Event works too,
    checked between reads."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()

    def set(self) -> None:
        super().set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def attach(self, response: httpx.Response) -> socket.socket | None:
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            return None
        with self._lock:
            self._sockets.add(sock)
        if self.is_set():  # set while the stream opened
            _shut(sock)
        return sock

    def detach(self, sock: socket.socket | None) -> None:
        if sock is not None:
            with self._lock:
                self._sockets.discard(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes the reading thread; httpx then closes it


class AsyncStopping:
    """How an async watch is stopped: by cancelling its task or closing its generator, which
    reach it at its next await. There is no flag to look at, so it never reads as set."""

    def is_set(self) -> bool:
        return False

    async def wait(self, seconds: float) -> bool:
        """Sleep `seconds`; whether the watch was stopped meanwhile (never: see above)."""
        await asyncio.sleep(seconds)
        return False

    def interrupting(self, response: httpx.Response) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class Stopping:
    """How a sync watch is stopped: its `stop` event, looked at between reads and during its
    pauses; a Stop also shuts the socket of the stream being read."""

    def __init__(self, stop: threading.Event | None) -> None:
        self.event = stop if stop is not None else threading.Event()

    def is_set(self) -> bool:
        return self.event.is_set()

    def wait(self, seconds: float) -> bool:
        return self.event.wait(seconds)

    @contextlib.contextmanager
    def interrupting(self, response: httpx.Response) -> Iterator[None]:
        """While `response` is read in this block, a Stop's `set()` shuts its socket."""
        if not isinstance(self.event, Stop):
            yield
            return
        sock = self.event.attach(response)
        try:
            yield
        finally:
            self.event.detach(sock)


class AsyncWorker:
    """What runs an async mirror: a task on the running loop, stopped by cancelling it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._task: asyncio.Task[None] | None = None

    def start(self, target: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._task is not None:
            raise RuntimeError("a mirror starts once")
        self._task = asyncio.get_running_loop().create_task(target(), name=self.name)

    async def stop(self) -> None:
        """Cancel the task and wait for it (its stream is closed on the way out)."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()


class Worker:
    """What runs a sync mirror: a daemon thread, stopped by `stop`, a Stop (which shuts the
    thread's open stream at once)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stop_event = Stop()
        self._thread: threading.Thread | None = None

    def start(self, target: Callable[[], None]) -> None:
        if self._thread is not None:
            raise RuntimeError("a mirror starts once")
        self._thread = threading.Thread(target=target, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Set the Stop and wait for the thread (unless called from it)."""
        self.stop_event.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
