from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Server, netfs, start_server
from tests.support.watch import Watch


@pytest.fixture
def sessions_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "sessions"
    folder.mkdir()
    return folder


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start the real service (`python -m app`, uvicorn, the real watcher) on a free loopback
    port; every server started is stopped in teardown."""
    servers: list[Server] = []
    log_dir = tmp_path / "logs"
    log_dir.mkdir(exist_ok=True)

    def start(sessions_dir: Path, **kwargs: Any) -> Server:
        server = start_server(sessions_dir, log_dir, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def watch() -> Iterator[Callable[..., Watch]]:
    """Open a real streaming client on a change stream (`Watch`); all are closed in teardown."""
    opened: list[Watch] = []

    def open_watch(server: Server, path: str, **kwargs: Any) -> Watch:
        stream = Watch(server.base_url, path, **kwargs)
        opened.append(stream)
        return stream

    yield open_watch
    for stream in opened:
        stream.close()


@pytest.fixture
def stack(serve: Callable[..., Server]) -> Iterator[contextlib.ExitStack]:
    """Clients, mirrors and watches a test opens (`stack.enter_context`), closed in teardown in
    reverse order, before the servers they talk to are stopped (it depends on `serve`)."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture
def network_folder(tmp_path: Path) -> Iterator[netfs.NetworkFolder]:
    """A real network filesystem: a folder exported by a loopback sshd and mounted with sshfs
    (attribute cache 3 s, like NFS). Write "on the file server" in `server_path`, serve
    `mount_path`; `kill_server`/`start_server`/`freeze_server` make the server go away. Skipped
    only where FUSE is impossible (no /dev/fuse)."""
    reason = netfs.unavailable()
    if reason is not None:
        pytest.skip(reason)
    with netfs.mounted(tmp_path / "netfs") as folder:
        yield folder
