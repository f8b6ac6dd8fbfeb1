"""The client's sync code is generated from its async code (client/scripts/unasync.py): the
committed sync code must be what the async code makes now, and the translation's rules must do
what the async code relies on."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

import sessions_client

SCRIPT = Path(__file__).resolve().parents[1] / "client" / "scripts" / "unasync.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("client_unasync", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_sync_code_is_what_the_async_code_makes() -> None:
    unasync = load_script()
    assert unasync.main(["--check"]) == 0, "the sync client is stale or hand-edited: run `make unasync`"
    assert sorted(path.name for path in unasync.TARGET.glob("*.py")) == sorted(
        path.name for path in unasync.SOURCE.glob("*.py")
    )


def test_markers_and_renames() -> None:
    translate = load_script().Unasync()
    source = (
        "from sessions_client._async.client import AsyncSessionsClient\n"
        "    # sync: import threading\n"
        "    async def stop(self) -> None:  # async only\n"
        "    async def aclose(self) -> AsyncIterator[Page]:\n"
        "        async with self._http.stream() as response:\n"
        "            await async_sleep(await response.aread())\n"
        "            async for chunk in response.aiter_bytes():\n"
        "    async def __aenter__(self) -> AsyncMirror:  # the async mirror\n"
    )
    assert translate.text(source) == (
        "from sessions_client._sync.client import SessionsClient\n"
        "    import threading\n"
        "    def close(self) -> Iterator[Page]:\n"
        "        with self._http.stream() as response:\n"
        "            sleep(response.read())\n"
        "            for chunk in response.iter_bytes():\n"
        "    def __enter__(self) -> Mirror:  # the async mirror\n"
    )
    assert translate.line("asyncio, awaited, aclosing, Asynchronous, my_async_x\n") == (
        "asyncio, awaited, aclosing, Asynchronous, my_async_x\n"
    )


def test_the_two_apis_differ_only_where_sync_and_async_must() -> None:
    """The generated sync classes keep the sync API: the same methods as the async ones (but
    for the context manager's and close's names), and `stop` where a thread needs it."""
    pairs = [
        (sessions_client.SessionsClient, sessions_client.AsyncSessionsClient),
        (sessions_client.Mirror, sessions_client.AsyncMirror),
    ]
    renamed = {"__enter__": "__aenter__", "__exit__": "__aexit__", "close": "aclose"}
    for sync, asynchronous in pairs:
        sync_names = {name for name in vars(sync) if not name.startswith("_") or name in renamed}
        async_names = {name for name in vars(asynchronous) if not name.startswith("_") or name in renamed.values()}
        assert {renamed.get(name, name) for name in sync_names} == async_names
        for name in sync_names:
            member = getattr(sync, name)
            assert not inspect.iscoroutinefunction(member) and not inspect.isasyncgenfunction(member), name
    for method in ("watch", "watch_job", "stream"):
        assert "stop" in inspect.signature(getattr(sessions_client.SessionsClient, method)).parameters
        assert "stop" not in inspect.signature(getattr(sessions_client.AsyncSessionsClient, method)).parameters
    assert list(inspect.signature(sessions_client.Mirror.stop).parameters) == ["self", "timeout"]
    assert list(inspect.signature(sessions_client.AsyncMirror.stop).parameters) == ["self"]
