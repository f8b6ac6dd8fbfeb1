"""On a network filesystem a poll's folder operations (a listing, a stat per hot file: each a
round trip) take seconds at 100,000 sessions; the reconciler runs them in a thread of its own and
applies what writers announce meanwhile, so an announced change does not wait behind a poll
(docs/network-volumes.md).

The reconciler here runs over a local folder with the watch plan `auto` makes for an NFS mount
(what is tested is what the service does in that mode; tests/test_network_writers.py runs the
real sshfs mount), and the poller's folder operation is held by the test until the announced
change has been applied.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from app.errors import SessionNotFound
from app.settings import load_settings
from app.store import poller
from app.store.reconciler import Reconciler
from app.store.store import SessionStore
from app.store.watchmode import WatchPlan
from tests.support import put_session, wait_until

NFS = WatchPlan(mode="poll", setting="auto", filesystem="nfs4", reason="network filesystem")


class Hold:
    """A blocking folder operation stand-in: it waits until released (or 30 s at most)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()

    def __call__(self) -> None:
        self.entered.set()
        assert self.released.wait(30), "never released"


@pytest.fixture
def running(sessions_dir: Path) -> Iterator[tuple[SessionStore, Reconciler]]:
    put_session(sessions_dir, "announced", user_id="before")
    put_session(sessions_dir, "other")
    settings = load_settings(
        {"SESSIONS_DIR": str(sessions_dir), "SESSIONS_WATCH": "auto", "SESSIONS_POLL_INTERVAL_MS": "50"}
    )
    store = SessionStore(sessions_dir, cache_max_entries=1000, cache_max_bytes=10**8, max_file_bytes=10**6)
    reconciler = Reconciler(store, settings, NFS)
    assert reconciler.network and reconciler.poller is not None
    try:
        yield store, reconciler
    finally:
        reconciler.stop()


def user_of(store: SessionStore, job_id: str) -> str | None:
    try:
        document = store.lookup(job_id)[0]
    except SessionNotFound:
        return None
    return None if document is None else str(orjson.loads(document.body).get("user_id"))


def hold_listing(monkeypatch: pytest.MonkeyPatch, sessions_dir: Path, hold: Hold) -> None:
    real = poller.list_folder

    def held(root: Path) -> dict[str, int]:
        hold()
        return real(root)

    monkeypatch.setattr(poller, "list_folder", held)
    put_session(sessions_dir, "created")  # the folder changes: the next poll lists it


def hold_hot_stats(monkeypatch: pytest.MonkeyPatch, sessions_dir: Path, hold: Hold, reconciler: Reconciler) -> None:
    assert reconciler.poller is not None
    real = reconciler.poller.stat

    def held(path: str) -> os.stat_result:
        if path != str(sessions_dir):  # a hot file's stat, not the folder's
            hold()
        return real(path)

    reconciler.poller.stat = held


@pytest.mark.parametrize("operation", ["listing", "hot stats"])
def test_an_announced_change_is_applied_while_a_poll_waits_on_the_folder(
    running: tuple[SessionStore, Reconciler], sessions_dir: Path, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    store, reconciler = running
    hold = Hold()
    holders: dict[str, Callable[[], None]] = {
        "listing": lambda: hold_listing(monkeypatch, sessions_dir, hold),
        "hot stats": lambda: hold_hot_stats(monkeypatch, sessions_dir, hold, reconciler),
    }
    reconciler.start()
    wait_until(reconciler.ready.is_set, timeout=30, what="the warm-up")
    assert user_of(store, "announced") == "before"
    try:
        holders[operation]()
        wait_until(hold.entered.is_set, timeout=30, what=f"the poll's {operation}")
        put_session(sessions_dir, "announced", user_id="after")
        reconciler.pending.add(["announced"])  # what the announcement reader does with a journal line
        wait_until(lambda: user_of(store, "announced") == "after", timeout=30, what="the announced change")
        assert not hold.released.is_set() and hold.entered.is_set()  # the poll is still waiting
    finally:
        hold.released.set()
    if operation == "listing":  # and the poll goes on once the folder answers
        wait_until(lambda: user_of(store, "created") is not None, timeout=30, what="the listed creation")
