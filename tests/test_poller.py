"""The poller over a real folder, driven step by step in this thread (docs/network-volumes.md):
a period costs what is hot (unfinished, invalid, racy, recently changed), not what exists;
creations, renames and deletions are found through the folder's own times and the inode numbers
its listing gives; everything else is left to the full rescan."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from app.settings import load_settings
from app.store import fileversion, poller
from app.store.reconciler import Reconciler
from app.store.store import SessionStore
from tests.support import encode, put_session, session_doc, write_in_place


def make(folder: Path) -> tuple[SessionStore, Reconciler]:
    settings = load_settings({"SESSIONS_DIR": str(folder), "SESSIONS_WATCH": "poll"})
    store = SessionStore(folder, cache_max_entries=1000, cache_max_bytes=10**8, max_file_bytes=10**6)
    reconciler = Reconciler(store, settings)
    reconciler._warm_up()
    reconciler.ready.set()
    return store, reconciler


def settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every timestamp old enough to trust (racy files and folders are looked at again
    until then): the clock is moved on, rather than the test waiting 2 s."""
    real = time.time_ns
    monkeypatch.setattr(fileversion.time, "time_ns", lambda: real() + 10 * fileversion.RACY_WINDOW_NS)


def step(reconciler: Reconciler) -> set[str]:
    assert reconciler.poller is not None
    job_ids, replaced = reconciler.poller.step()
    assert not replaced
    for job_id in job_ids:
        reconciler._reconcile_one(job_id)
    return job_ids


def test_a_period_stats_the_hot_files_only(sessions_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(200):
        put_session(sessions_dir, f"done-{n}", status=("completed", "failed", "cancelled")[n % 3])
    for n in range(5):
        put_session(sessions_dir, f"live-{n}", status="running")
    (sessions_dir / "broken.json").write_bytes(b"{")
    settle(monkeypatch)
    store, reconciler = make(sessions_dir)
    assert reconciler.poller is not None
    assert reconciler.poller.hot == {f"live-{n}" for n in range(5)} | {"broken"}
    stats: list[str] = []
    real_stat = reconciler.poller.stat
    reconciler.poller.stat = lambda path: (stats.append(os.path.basename(path)), real_stat(path))[1]
    assert step(reconciler) == set()  # nothing changed: nothing to read
    assert step(reconciler) == set()
    # Two periods: the folder and the 6 hot files each time; none of the 200 finished sessions.
    assert len(stats) == 2 * (1 + 6), stats
    assert not [name for name in stats if name.startswith("done-")]


def test_an_unfinished_session_rewritten_in_place_is_found(sessions_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    put_session(sessions_dir, "live", status="running")
    settle(monkeypatch)
    store, reconciler = make(sessions_dir)
    data = encode(session_doc("live", status="pending_hitl", question="ok?"))
    write_in_place(sessions_dir / "live.json", data)
    assert step(reconciler) == {"live"}
    assert store.lookup("live")[0] is not None and store.lookup("live")[0].body == data  # type: ignore[union-attr]


def test_creations_renames_and_deletions_are_found_through_the_folder(
    sessions_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for job_id in ("replaced", "deleted", "untouched"):
        put_session(sessions_dir, job_id, status="completed")
    settle(monkeypatch)
    store, reconciler = make(sessions_dir)
    assert reconciler.poller is not None and reconciler.poller.hot == set()  # all finished
    put_session(sessions_dir, "created", status="completed")
    put_session(sessions_dir, "replaced", status="completed", result={"late": True})  # renamed over it
    (sessions_dir / "deleted.json").unlink()
    listings = reconciler.poller.stats.listings
    assert step(reconciler) == {"created", "replaced", "deleted"}
    assert reconciler.poller.stats.listings == listings + 1
    assert sorted(store.job_ids()) == ["created", "replaced", "untouched"]
    assert b'"late"' in store.lookup("replaced")[0].body  # type: ignore[union-attr]
    # Changed sessions stay hot for a while, even finished: writers come back to them.
    assert reconciler.poller.hot == {"created", "replaced"}
    # A quiet folder is not listed again.
    assert step(reconciler) == set()
    assert reconciler.poller.stats.listings == listings + 1


def test_recently_changed_finished_sessions_cool_down(sessions_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    put_session(sessions_dir, "a", status="running")
    settle(monkeypatch)
    store, reconciler = make(sessions_dir)
    put_session(sessions_dir, "a", status="completed")
    assert step(reconciler) == {"a"}
    assert reconciler.poller is not None and "a" in reconciler.poller.hot
    real = time.monotonic
    monkeypatch.setattr(poller.time, "monotonic", lambda: real() + poller.HOT_WINDOW_S + 1)
    step(reconciler)
    assert "a" not in reconciler.poller.hot


def test_a_finished_session_rewritten_in_place_waits_for_the_full_rescan(
    sessions_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cost of polling by what changes: a finished, long unchanged session rewritten in
    place (the folder does not change) is found by the rescan, within its interval."""
    put_session(sessions_dir, "old", status="completed")
    settle(monkeypatch)
    store, reconciler = make(sessions_dir)
    data = encode(session_doc("old", status="completed", amended=True))
    write_in_place(sessions_dir / "old.json", data)
    assert step(reconciler) == set()
    reconciler._rescan()
    assert store.lookup("old")[0].body == data  # type: ignore[union-attr]


def test_the_listing_is_rate_limited_by_its_own_cost(sessions_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder that changes all the time is not listed all the time: a listing that took L
    seconds is followed by another no sooner than L / LISTING_SHARE (nor a period) later. (The
    poller's clock is a stand-in here, moved by the test: a loaded machine cannot skew it.)"""
    settle(monkeypatch)
    store, reconciler = make(sessions_dir)
    assert reconciler.poller is not None
    now = [time.monotonic()]
    monkeypatch.setattr(poller.time, "monotonic", lambda: now[0])
    real_listing = poller.list_folder
    listing_s = 0.2
    assert listing_s / poller.LISTING_SHARE > reconciler.poller.period_s + 0.2

    def slow_listing(root: Path) -> dict[str, int]:
        now[0] += listing_s
        return real_listing(root)

    monkeypatch.setattr(poller, "list_folder", slow_listing)
    put_session(sessions_dir, "a")
    assert step(reconciler) == {"a"}
    listed_at = now[0]
    put_session(sessions_dir, "b")
    now[0] += reconciler.poller.period_s + 0.05
    assert step(reconciler) == set()  # changed, but a period is not enough after a slow listing
    now[0] = listed_at + listing_s / poller.LISTING_SHARE + 0.01
    assert step(reconciler) == {"b"}
