"""What app/server relies on in uvicorn's internals, in one place: an upgrade that changes any of
it fails here, naming what changed, before the behaviour tests fail in ways that take a while to
trace back (app/server is the only code that touches these; tests/test_layers.py keeps it so).

The names are checked first; then one request goes through our protocol, served by uvicorn's own
HTTP machinery on a real loopback socket, to check that the parts we read and replace (the
request cycle, its transport and flow control, the server's set of connections) still behave as
the protocol assumes."""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from typing import Any

import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from app.changes.streams import STREAM_WRITE
from app.server.httpprotocol import BoundedHttpProtocol, close_stalled_requests
from app.server.server import DrainingServer

# HttpToolsProtocol: the methods BoundedHttpProtocol overrides and calls through super().
PROTOCOL_METHODS = (
    "connection_made",
    "connection_lost",
    "data_received",
    "on_headers_complete",
    "on_message_complete",
    "on_response_complete",
)
# uvicorn.Server: what DrainingServer overrides, calls, or sets.
SERVER_METHODS = ("main_loop", "on_tick", "handle_exit", "shutdown", "run")
SERVER_ATTRIBUTES = ("should_exit", "force_exit", "server_state", "config")


def test_the_protocol_hooks_we_override_exist() -> None:
    missing = [name for name in PROTOCOL_METHODS if not callable(getattr(HttpToolsProtocol, name, None))]
    assert missing == [], f"uvicorn's HttpToolsProtocol no longer has {missing}"
    parameters = list(inspect.signature(HttpToolsProtocol.__init__).parameters)
    assert parameters[:4] == ["self", "config", "server_state", "app_state"], parameters
    assert "write_paused" in inspect.getsource(FlowControl.__init__), "FlowControl.write_paused is gone"


def test_the_request_cycle_has_what_a_stream_reads() -> None:
    source = inspect.getsource(RequestResponseCycle.__init__)
    for attribute in (
        *("scope", "transport", "flow", "response_complete", "disconnected", "chunked_encoding"),
        *("keep_alive", "message_event"),
    ):
        assert re.search(rf"self\.{attribute}\b[^=\n]*=", source), f"RequestResponseCycle no longer sets {attribute}"


def test_the_server_hooks_we_override_exist() -> None:
    missing = [name for name in SERVER_METHODS if not callable(getattr(uvicorn.Server, name, None))]
    assert missing == [], f"uvicorn.Server no longer has {missing}"
    assert list(inspect.signature(uvicorn.Server.on_tick).parameters) == ["self", "counter"]
    assert list(inspect.signature(uvicorn.Server.handle_exit).parameters) == ["self", "sig", "frame"]
    server = DrainingServer(uvicorn.Config(_app, log_config=None), 0.0, _shutdown())
    absent = [name for name in SERVER_ATTRIBUTES if not hasattr(server, name)]
    assert absent == [], f"uvicorn.Server instances no longer have {absent}"
    assert isinstance(server.server_state.connections, set)


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A stream: one chunk through `send`, one through the protocol's direct write, then the end
    once the client has looked at the connection mid-stream."""
    write = scope.get("extensions", {}).get(STREAM_WRITE)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"sent", "more_body": True})
    assert write is not None and write(b"direct")
    await _looked.wait()
    await send({"type": "http.response.body", "body": b""})


_looked = asyncio.Event()


def _shutdown() -> Any:
    from app.lifecycle import Shutdown

    return Shutdown()


def test_a_stream_through_our_protocol_on_uvicorns_machinery() -> None:
    async def scenario() -> tuple[bytes, bool]:
        loop = asyncio.get_running_loop()
        config = uvicorn.Config(_app, http=BoundedHttpProtocol, lifespan="off", log_config=None, access_log=False)
        config.load()
        state = ServerState()
        server = await loop.create_server(
            lambda: BoundedHttpProtocol(config=config, server_state=state, app_state={}, _loop=loop), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /api/v2/jobs?watch=true HTTP/1.1\r\nhost: test\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"direct\r\n"), 10)
            connections = set(state.connections)
            # Mid-stream: the protocol counts the stream's writes, its own and the direct one,
            # and the sweep reads each connection's transport, request start and counting.
            [connection] = connections
            assert isinstance(connection, BoundedHttpProtocol) and connection.counting is not None
            written = connection.counting.written == len(head)  # the head and both chunks, every byte
            assert close_stalled_requests(connections, loop.time(), 60.0) == 0
            _looked.set()
            response = head + await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)
            writer.close()
            await writer.wait_closed()
            return response, written
        finally:
            server.close()
            await server.wait_closed()

    started = time.monotonic()
    response, written = asyncio.run(scenario())
    assert time.monotonic() - started < 30
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower(), head
    assert body == b"4\r\nsent\r\n6\r\ndirect\r\n0\r\n\r\n", body  # the direct write went in order
    assert written, "the stream's writes were not all counted"
