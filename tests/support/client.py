"""Test support for the callers' library (client/): a TCP forwarder that stands in for a load
balancer switching replicas, a watch read in a thread, a mirror's callbacks recorded, waits in
async code, and the library's view compared with the service's."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from sessions_client import Backoff, Stop, Summary

T = TypeVar("T")
# Retries within a test come back fast; the backoff still doubles and jitters as in production.
FAST_BACKOFF = Backoff(initial=0.05, maximum=0.5)


def as_items(mirror: dict[str, Summary]) -> dict[str, dict[str, Any]]:
    return {job_id: dict(summary.data) for job_id, summary in mirror.items()}


class Recorder:
    """A mirror's callbacks, recorded in order (from the mirror's thread or task)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self._lock = threading.Lock()

    def added(self, summary: Summary) -> None:
        self._record("added", summary.job_id, summary.status)

    def modified(self, old: Summary, new: Summary) -> None:
        self._record("modified", new.job_id, (old.status, new.status))

    def deleted(self, summary: Summary) -> None:
        self._record("deleted", summary.job_id, summary.status)

    def _record(self, kind: str, job_id: str, detail: Any) -> None:
        with self._lock:
            self.calls.append((kind, job_id, detail))

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {"on_added": self.added, "on_modified": self.modified, "on_deleted": self.deleted}

    def since(self, start: int) -> list[tuple[str, str, Any]]:
        with self._lock:
            return list(self.calls[start:])

    def mark(self) -> int:
        with self._lock:
            return len(self.calls)


class Forwarder:
    """A TCP forwarder on a loopback port: each connection goes to the current backend port, as
    through a load balancer. `switch` sends new connections to another backend and cuts the
    open ones, as a load balancer does when a replica goes away. Two threads per connection;
    all closed and joined by `close`. (The real HAProxy tests are in the load-balancer suite.)"""

    def __init__(self, backend_port: int) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._backend = backend_port
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.connections = 0
        self.refused = 0
        self._to_refuse = 0
        self._accepting = threading.Thread(target=self._accept, name="forwarder accept", daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                refuse, self._to_refuse = self._to_refuse > 0, max(0, self._to_refuse - 1)
                self.refused += refuse
            if refuse:
                client.close()  # a replica that died mid-request: the caller's request gets no answer
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self._backend), timeout=5)
            except OSError:
                client.close()  # no backend: the caller sees its connection closed
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
                self.connections += 1
                for source, target in ((client, upstream), (upstream, client)):
                    thread = threading.Thread(target=self._pump, args=(source, target), daemon=True)
                    self._threads.append(thread)
                    thread.start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def refuse(self, count: int) -> None:
        """Close the next `count` connections as soon as they are accepted, without a byte."""
        with self._lock:
            self._to_refuse = count

    def switch(self, backend_port: int) -> None:
        self._backend = backend_port
        self.cut()

    def cut(self) -> None:
        """End every open connection (a backend died, or the balancer moved them)."""
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept(), which close() alone does not
        self._listener.close()
        self._accepting.join(10)
        assert not self._accepting.is_alive(), "the forwarder did not stop accepting"
        self.cut()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(10)
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


class Consumer(Generic[T]):
    """Reads a sync watch in a thread, keeping every event; `close` stops it (a Stop shuts its
    stream at once) and joins the thread. A context manager."""

    def __init__(self, events: Callable[[Stop], Iterator[T]]) -> None:
        self.stop = Stop()
        self.events: list[T] = []
        self.failure: BaseException | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(events,), name="watch consumer", daemon=True)
        self._thread.start()

    def _run(self, events: Callable[[Stop], Iterator[T]]) -> None:
        try:
            for event in events(self.stop):
                with self._changed:
                    self.events.append(event)
                    self._changed.notify_all()
        except BaseException as exc:  # noqa: BLE001 (reported by wait and close, in the test's thread)
            self.failure = exc
        finally:
            with self._changed:
                self._changed.notify_all()

    def wait(self, condition: Callable[[list[T]], Any], timeout: float = 30.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if self.failure is not None:
                    raise AssertionError(f"the watch failed: {self.failure!r}") from self.failure
                result = condition(self.events)
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}; events: {self.events[-20:]}")
                self._changed.wait(min(remaining, 0.1))

    def close(self) -> None:
        self.stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the watch did not stop"
        if self.failure is not None:
            raise self.failure

    def __enter__(self) -> Consumer[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
