"""Unit tests of the reconciler and the loader around the store, over real files.

What cannot be made real here is an error no rule expects (a bug, a library surprise): those
tests make `sessionfile.read` raise for one id with pytest's monkeypatch, and say so.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from app.errors import TemporarilyUnavailable
from app.settings import load_settings
from app.store import sessionfile
from app.store.loader import MissLoader
from app.store.reconciler import Reconciler
from app.store.store import SessionStore
from tests.support import encode, put_session, session_doc


def make(folder: Path) -> tuple[SessionStore, Reconciler]:
    settings = load_settings({"SESSIONS_DIR": str(folder), "SESSIONS_WATCH": "off"})
    store = SessionStore(folder, cache_max_entries=100, cache_max_bytes=10**7, max_file_bytes=10**6)
    return store, Reconciler(store, settings)


@pytest.fixture
def surprise(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Ids whose read raises an error no rule expects (mocked: a bug cannot be made real)."""
    failing: set[str] = set()
    real_read = sessionfile.read

    def read(root: Path, job_id: str, max_bytes: int, **options: Any) -> Any:
        if job_id in failing:
            raise RuntimeError(f"surprise reading {job_id}")
        return real_read(root, job_id, max_bytes, **options)

    monkeypatch.setattr(sessionfile, "read", read)
    yield failing


def test_a_surprise_in_one_file_does_not_stop_the_warm_up(sessions_dir: Path, surprise: set[str]) -> None:
    for job_id in ("a", "b", "c"):
        put_session(sessions_dir, job_id)
    surprise.add("b")
    store, reconciler = make(sessions_dir)
    reconciler._warm_up()
    assert store.stats()["sessions"] == 2  # a and c, and the warm-up finished: lists work
    assert store.page(statuses=None, user_id=None, include_saved=True, after=None, limit=10)[1] == 2
    assert reconciler._retry == {"b"}  # and b is tried again
    surprise.clear()
    reconciler._reconcile_one("b")
    assert store.stats()["sessions"] == 3


def test_a_surprise_in_one_file_does_not_stop_a_rescan(sessions_dir: Path, surprise: set[str]) -> None:
    store, reconciler = make(sessions_dir)
    reconciler._warm_up()
    for job_id in ("a", "b", "c"):
        put_session(sessions_dir, job_id)
    surprise.add("a")
    reconciler._rescan()
    assert store.stats()["sessions"] == 2
    assert reconciler._retry == {"a"}


def test_a_failed_load_whose_only_waiter_left_is_not_reported_unretrieved(tmp_path: Path) -> None:
    """A load that fails after its only waiter disconnected: its exception is retrieved by the
    loader, not logged by asyncio as "Future exception was never retrieved"."""
    release = threading.Event()

    class FailingStore:  # a stand-in for the store: only the failure matters here
        def load_missing(self, job_id: str) -> Any:
            release.wait(5)
            raise TemporarilyUnavailable("mid-write")

    unretrieved: list[dict[str, Any]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: unretrieved.append(context))
        with ThreadPoolExecutor(1) as executor:
            loader = MissLoader(FailingStore(), executor)  # type: ignore[arg-type]
            waiter = asyncio.ensure_future(loader.load("x"))
            await asyncio.sleep(0.01)
            waiter.cancel()  # the client disconnected
            release.set()
            while loader._in_flight:
                await asyncio.sleep(0.01)
        gc.collect()  # "never retrieved" is reported when the future is collected
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert not unretrieved, unretrieved


def test_rescans_see_the_signature_the_warm_up_gave_a_link(tmp_path: Path) -> None:
    folder = tmp_path / "sessions"
    folder.mkdir()
    (tmp_path / "outside.json").write_bytes(encode(session_doc("outside")))
    (folder / "outside.json").symlink_to(tmp_path / "outside.json")
    store, reconciler = make(folder)
    changes: list[str] = []
    reconciler.on_change = lambda change, job_id: changes.append(f"{change.value} {job_id}")
    reconciler._warm_up()
    reconciler._rescan()
    reconciler._rescan()
    assert changes == ["invalid outside"]
