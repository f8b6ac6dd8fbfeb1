"""The poller over a real folder, driven step by step in this thread (docs/network-volumes.md):
a period costs what is hot (unfinished, invalid, racy, recently changed), not what exists;
creations, renames and deletions are found through the folder's own times and the inode numbers
its listing gives; everything else is left to the full rescan."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

from app.settings import load_settings
from app.store import fileversion, poller
from app.store import reconciler as reconciler_module
from app.store.reconciler import Reconciler
from app.store.store import SessionStore
from app.store.watchmode import WatchPlan
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


def network_poller(
    reconciler: Reconciler, hot_cycle_s: float | None = poller.HOT_CYCLE_S, stat_threads: int = 1
) -> poller.Poller:
    """The poller as it runs on a network mount (forced stats, which a local disk ignores), over
    this real folder."""
    network = poller.Poller(
        reconciler.root,
        reconciler.store,
        reconciler.settings.poll_interval_s,
        forced=True,
        hot_cycle_s=hot_cycle_s,
        stat_threads=stat_threads,
    )
    network.listed(poller.list_folder(reconciler.root), network.probe_folder())
    network.seed()
    reconciler.poller = network
    return network


def counting_stats(target: poller.Poller) -> list[str]:
    stats: list[str] = []
    real_stat = target.stat
    target.stat = lambda path: (stats.append(os.path.basename(path)), real_stat(path))[1]
    return stats


def test_on_a_network_mount_a_quiet_folder_costs_a_slice_of_the_hot_files_per_period(
    sessions_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each stat is a round trip to the file server there: while the folder does not change,
    a period looks at a slice of the hot files, each once per HOT_CYCLE_S, which still finds a
    rewrite in place within that cycle."""
    live = [f"live-{n:03}" for n in range(120)]
    for job_id in live:
        put_session(sessions_dir, job_id, status="running")
    for n in range(50):
        put_session(sessions_dir, f"done-{n}", status="completed")
    settle(monkeypatch)
    store, reconciler = make(sessions_dir)
    network = network_poller(reconciler)
    assert network.hot == set(live)
    stats = counting_stats(network)
    data = encode(session_doc("live-077", status="pending_hitl", question="ok?"))
    write_in_place(sessions_dir / "live-077.json", data)  # the folder does not change
    periods = round(poller.HOT_CYCLE_S / network.period_s)
    per_period = math.ceil(len(live) * network.period_s / poller.HOT_CYCLE_S)
    found = []
    for _ in range(periods):
        before = len(stats)
        found += step(reconciler)
        assert len(stats) - before == 1 + per_period  # the folder, and a slice of the hot files
    assert found == ["live-077"]
    assert store.lookup("live-077")[0].body == data  # type: ignore[union-attr]
    looked_at = [name.removesuffix(".json") for name in stats if name.startswith("live-")]
    assert sorted(looked_at) == live  # each once in the cycle


def test_on_a_network_mount_a_changed_folder_has_every_hot_file_looked_at(
    sessions_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A temp file and a rename change the folder: that period every hot file is stat-ed (a
    listing without inode numbers, sshfs's, cannot tell which file was renamed over)."""
    live = [f"live-{n}" for n in range(10)]
    for job_id in live:
        put_session(sessions_dir, job_id, status="running")
    settle(monkeypatch)
    store, reconciler = make(sessions_dir)
    network = network_poller(reconciler)
    stats = counting_stats(network)
    assert step(reconciler) == set()
    assert len(stats) == 2  # quiet: the folder and a slice of one
    stats.clear()
    put_session(sessions_dir, "live-7", status="pending_hitl")
    assert step(reconciler) == {"live-7"}
    assert {f"{job_id}.json" for job_id in live} <= set(stats)
    # And every period for a while after: a renamed file's attributes may still be cached by
    # the client (past a forced stat) when the folder's change shows.
    real = time.monotonic
    for elapsed in (1.0, poller.SWEEP_AFTER_CHANGE_S - 0.5):
        stats.clear()
        monkeypatch.setattr(poller.time, "monotonic", lambda elapsed=elapsed: real() + elapsed)
        assert step(reconciler) == set()
        assert {f"{job_id}.json" for job_id in live} <= set(stats)
    stats.clear()
    monkeypatch.setattr(poller.time, "monotonic", lambda: real() + poller.SWEEP_AFTER_CHANGE_S + 1)
    assert step(reconciler) == set()
    assert len(stats) == 2  # quiet again: the folder and a slice of one
    assert store.lookup("live-7")[0] is not None and b"pending_hitl" in store.lookup("live-7")[0].body  # type: ignore[union-attr]


def test_a_sweep_in_several_threads_finds_exactly_what_changed(
    sessions_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a network mount the hot files' stats run in several threads (their round trips
    overlap): each result is still compared with its own session."""
    live = [f"live-{n:03}" for n in range(3 * poller.PARALLEL_FROM)]
    for job_id in live:
        put_session(sessions_dir, job_id, status="running")
    settle(monkeypatch)
    store, reconciler = make(sessions_dir)
    network = network_poller(reconciler, stat_threads=3)
    try:
        stats = counting_stats(network)
        changed = {"live-005", "live-100", "live-191"}
        for job_id in sorted(changed):
            put_session(sessions_dir, job_id, status="pending_hitl", step=2)  # temp file and rename
        assert step(reconciler) == changed
        assert {f"{job_id}.json" for job_id in live} <= set(stats)
        for job_id in changed:
            assert b"pending_hitl" in store.lookup(job_id)[0].body  # type: ignore[union-attr]
    finally:
        network.close()


NETWORK = WatchPlan("poll", "auto", "fuse.sshfs", "network filesystem")


@pytest.mark.parametrize(
    ("rescan_s", "cycle_s"), [("60", None), ("0", poller.HOT_CYCLE_S), ("600", poller.HOT_CYCLE_S)]
)
def test_full_rescans_often_enough_replace_the_hot_cycle(
    sessions_dir: Path, rescan_s: str, cycle_s: float | None
) -> None:
    """A full rescan looks at every file, the hot ones too: where one comes at least once per
    hot cycle (the default 60 s), a quiet folder costs one stat a period, of the folder."""
    settings = load_settings({"SESSIONS_DIR": str(sessions_dir), "SESSIONS_RESCAN_INTERVAL_S": rescan_s})
    store = SessionStore(sessions_dir, cache_max_entries=1000, cache_max_bytes=10**8, max_file_bytes=10**6)
    reconciler = Reconciler(store, settings, watch=NETWORK)
    assert reconciler.poller is not None and reconciler.poller.hot_cycle_s == cycle_s


def test_without_a_hot_cycle_a_quiet_folder_costs_one_stat_a_period(
    sessions_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(20):
        put_session(sessions_dir, f"live-{n}", status="running")
    settle(monkeypatch)
    store, reconciler = make(sessions_dir)
    network = network_poller(reconciler, hot_cycle_s=None)
    stats = counting_stats(network)
    for _ in range(5):
        assert step(reconciler) == set()
    assert stats == [sessions_dir.name] * 5


def test_a_rescan_on_a_network_mount_lists_again_when_its_stats_turn_slow(
    sessions_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing brings every file's attributes into the client's cache for a few seconds: a
    rescan lists, then stats with several threads while they are there, and lists the folder
    again when its stats turn slow (each a round trip to the file server: the client no longer
    holds them). The slow stats are a stand-in here (the test cannot slow a real file server
    on demand): the stat threads' timings of one chunk are multiplied."""
    monkeypatch.setattr(reconciler_module, "SCAN_CHUNK", 50)
    count = 3 * reconciler_module.SCAN_CHUNK
    for n in range(count):
        put_session(sessions_dir, f"s-{n:04}", status="completed")
    settings = load_settings({"SESSIONS_DIR": str(sessions_dir)})
    store = SessionStore(sessions_dir, cache_max_entries=10_000, cache_max_bytes=10**8, max_file_bytes=10**6)
    reconciler = Reconciler(store, settings, watch=NETWORK)
    assert reconciler.network
    listings: list[object] = []
    real_scandir = os.scandir

    def counting_scandir(path: str | Path) -> object:
        listings.append(path)
        return real_scandir(path)

    monkeypatch.setattr(reconciler_module.os, "scandir", counting_scandir)
    try:
        found, _ = reconciler._scan()
        assert sorted(found) == [f"s-{n:04}" for n in range(count)]
        assert len(listings) == 1  # steady stats: one listing

        parts = [0]
        real_stat_part = reconciler._stat_part

        def slowed(part: list[tuple[str, str, int]], folder: int) -> tuple[dict[str, int], list[float]]:
            found, timings = real_stat_part(part, folder)
            parts[0] += 1  # parts of the second chunk: SCAN_STAT_THREADS + 1 ... 2 * SCAN_STAT_THREADS
            if reconciler_module.SCAN_STAT_THREADS < parts[0] <= 2 * reconciler_module.SCAN_STAT_THREADS:
                timings = [1.0 + timing for timing in timings]
            return found, timings

        monkeypatch.setattr(reconciler, "_stat_part", slowed)
        monkeypatch.setattr(reconciler_module, "RELIST_GAP_S", -1.0)
        listings.clear()
        again, _ = reconciler._scan()
        assert again == found and len(listings) == 2  # listed again after the slow chunk, once

        # A listing that does not make the stats fast again (the client answers it from its
        # cache, or has no such cache): the pass goes on without listing more.
        monkeypatch.setattr(reconciler_module, "SCAN_CHUNK", 30)  # 15 chunks, all slow but the first
        parts[0] = 0
        threads = reconciler_module.SCAN_STAT_THREADS

        def slow_after_the_first(part: list[tuple[str, str, int]], folder: int) -> tuple[dict[str, int], list[float]]:
            found, timings = real_stat_part(part, folder)
            parts[0] += 1
            return found, timings if parts[0] <= threads else [1.0 + timing for timing in timings]

        monkeypatch.setattr(reconciler, "_stat_part", slow_after_the_first)
        listings.clear()
        again, _ = reconciler._scan()
        assert again == found and len(listings) == 2  # the first, and one that did not help
    finally:
        assert reconciler._scan_stats is not None
        reconciler._scan_stats.shutdown()
