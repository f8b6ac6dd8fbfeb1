"""Test support for the change stream: a real streaming client (an httpx stream read in a
thread), NDJSON and SSE parsing, and waits on what it has received, with deadlines."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import orjson

Event = dict[str, Any]


class Watch:
    """GET `path` as a stream; every event is parsed and kept in order. With `sse`, asks for
    Server-Sent Events and keeps each event's `id` and `event` fields beside its data (as
    `_id` and `_event`). Always closed in teardown (`close`), which ends the reading thread."""

    def __init__(
        self,
        base_url: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        sse: bool = False,
        read_timeout: float = 60.0,
    ) -> None:
        self.url = base_url + path
        self.headers = dict(headers or {})
        if sse:
            self.headers.setdefault("Accept", "text/event-stream")
        self.sse = sse
        self.events: list[Event] = []
        self.raw = bytearray()  # every byte of the body, as received
        self.retries: list[int] = []  # SSE `retry:` fields, in milliseconds
        self.status: int | None = None
        self.response_headers: httpx.Headers | None = None
        self.body: bytes = b""  # of a response that is not a stream (an error)
        self.ended = False  # the server ended the response (cleanly, or not: see `failure`)
        self.failure: BaseException | None = None
        self._closing = False
        self._socket: socket.socket | None = None
        self._changed = threading.Condition()
        self._read_timeout = read_timeout
        self._thread = threading.Thread(target=self._run, name=f"watch {path}", daemon=True)
        self._thread.start()

    # --- reading, in the thread ------------------------------------------------------------------

    def _run(self) -> None:
        timeout = httpx.Timeout(10.0, read=self._read_timeout)
        try:
            with (
                httpx.Client(timeout=timeout) as client,
                client.stream("GET", self.url, headers=self.headers) as response,
            ):
                stream = response.extensions.get("network_stream")
                if stream is not None:
                    self._socket = stream.get_extra_info("socket")
                with self._changed:
                    self.status = response.status_code
                    self.response_headers = response.headers
                    self._changed.notify_all()
                if response.status_code != 200:
                    self.body = response.read()
                    return
                self._read(response)
        except (httpx.HTTPError, OSError) as exc:
            if not self._closing:
                self.failure = exc
        finally:
            with self._changed:
                self.ended = True
                self._changed.notify_all()

    def _read(self, response: httpx.Response) -> None:
        pending: dict[str, str] = {}
        data: list[str] = []
        buffer = b""
        for chunk in response.iter_raw():
            with self._changed:
                self.raw += chunk
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw_line in lines:
                line = raw_line.decode("utf-8")
                if not self.sse:
                    if line:
                        self._add(orjson.loads(line))
                    continue
                if line == "":
                    if data:
                        event = orjson.loads("\n".join(data))
                        event["_id"] = pending.get("id")
                        event["_event"] = pending.get("event")
                        self._add(event)
                    pending, data = {}, []
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    data.append(value)
                elif name in ("id", "event"):
                    pending[name] = value
                elif name == "retry":
                    with self._changed:
                        self.retries.append(int(value))
            if self._closing:
                return
        if buffer.strip():
            raise AssertionError(f"the stream ended in the middle of an event: {buffer[:200]!r}")

    def _add(self, event: Event) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    # --- the test's side ---------------------------------------------------------------------------

    def wait(self, condition: Callable[[Watch], Any], timeout: float = 10.0, what: str = "") -> Any:
        """Wait until `condition(self)` is truthy; its value."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                result = condition(self)
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what or condition}; status {self.status}, "
                        f"ended {self.ended}, failure {self.failure!r}, events: {self.summary()}"
                    )
                self._changed.wait(min(remaining, 0.1))

    def wait_status(self, timeout: float = 10.0) -> int:
        status: int = self.wait(lambda watch: watch.status, timeout, "the response to start")
        return status

    def wait_events(self, count: int, timeout: float = 10.0) -> list[Event]:
        self.wait(lambda watch: len(watch.events) >= count, timeout, f"{count} events")
        return self.events[:count]

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 10.0, what: str = "") -> Event:
        """The first event, from the start, that `predicate` accepts."""

        def found(watch: Watch) -> Event | None:
            return next((event for event in watch.events if predicate(event)), None)

        event: Event = self.wait(found, timeout, what or "an event")
        return event

    def wait_ended(self, timeout: float = 10.0) -> None:
        self.wait(lambda watch: watch.ended, timeout, "the stream to end")

    def changes(self) -> list[Event]:
        """The events that are not bookmarks."""
        return [event for event in self.events if event["type"] != "BOOKMARK"]

    def summary(self) -> list[str]:
        return [
            f"{event['type']} {event.get('revision')} {(event.get('object') or {}).get('job_id', '')}"
            for event in self.events[-20:]
        ]

    def close(self) -> None:
        self._closing = True
        if self._socket is not None:
            try:
                self._socket.shutdown(socket.SHUT_RDWR)  # wakes the thread's blocking read
            except OSError:
                pass
        self._thread.join(10)


def mirror(events: list[Event], key: str = "job_id") -> dict[str, Any]:
    """A collection as a caller keeps it: apply ADDED, MODIFIED and DELETED in order."""
    state: dict[str, Any] = {}
    for event in events:
        if event["type"] in ("ADDED", "MODIFIED"):
            state[event["object"][key]] = event["object"]
        elif event["type"] == "DELETED":
            state.pop(event["object"][key], None)
    return state


def open_raw_stream(base_url: str, target: str, receive_buffer: int | None = None) -> socket.socket:
    """A stream opened on a plain socket that then reads nothing (a stalled client). With
    `receive_buffer`, the socket's kernel buffer is made that small first, so that the server
    sees the stall soon."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


def read_head(sock: socket.socket) -> bytes:
    """The status line and headers of the response on `sock`."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return head
