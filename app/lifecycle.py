"""What SIGTERM sets in motion, shared by the server (app.server.server), which drives it, and the
application, which reacts. A process has one set of signals, hence one of these per process."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Shutdown:
    def __init__(self) -> None:
        # Set on SIGTERM: readiness turns 503 and responses close their connections, while
        # requests are still served (SESSIONS_SHUTDOWN_DELAY_S). Read from any thread.
        self.draining = threading.Event()
        self._on_stop: list[Callable[[], None]] = []

    def on_stop(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` on the event loop once the server stops serving (after the delay):
        streams end and waiting requests answer, instead of holding the process until the
        graceful timeout. Returns a function that takes the callback back."""
        self._on_stop.append(callback)
        return lambda: self._on_stop.remove(callback) if callback in self._on_stop else None

    def stop(self) -> None:
        """On the event loop: the server is about to stop accepting and wait for requests."""
        self.draining.set()
        for callback in list(self._on_stop):
            callback()


SHUTDOWN = Shutdown()
DRAINING = SHUTDOWN.draining
