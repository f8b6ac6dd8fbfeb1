"""Unit tests of the store, its index and its cache, over real files in a temporary folder."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from app.errors import SessionFileInvalid, SessionNotFound, TemporarilyUnavailable
from app.settings import FINISHED_STATUSES
from app.store import sessionfile
from app.store.index import SessionIndex
from app.store.store import Change, SessionStore
from tests.support import STATUSES, encode, session_doc, write_in_place


def make_store(root: Path, entries: int = 1000, size: int = 10_000_000) -> SessionStore:
    return SessionStore(root, cache_max_entries=entries, cache_max_bytes=size, max_file_bytes=1_000_000)


def load(store: SessionStore, root: Path, job_id: str) -> Change:
    return store.apply_loaded(sessionfile.read(root, job_id, store.max_file_bytes))


def write(root: Path, job_id: str, **fields: object) -> bytes:
    data = encode(session_doc(job_id, **fields))  # type: ignore[arg-type]
    write_in_place(root / f"{job_id}.json", data)
    return data


Item = tuple[tuple[int, str], str | None, str | None]


def item(job_id: str, instant: int, status: str | None = "running", user: str | None = "u") -> Item:
    return (-instant, job_id), status, user


def page_ids(index: SessionIndex, **query: object) -> list[str]:
    params: dict[str, object] = {"statuses": None, "user_id": None, "include_saved": True, "after": None, "limit": 10}
    params.update(query)
    keys, _, _ = index.page(**params)  # type: ignore[arg-type]
    return [key[1] for key in keys]


# --- the index -----------------------------------------------------------------------------------


def test_index_orders_newest_first_then_by_job_id() -> None:
    index = SessionIndex()
    for job_id, instant in [("b", 5), ("a", 5), ("c", 9), ("d", 1)]:
        index.add(*item(job_id, instant))
    keys, total, more = index.page(statuses=None, user_id=None, include_saved=True, after=None, limit=10)
    assert [key[1] for key in keys] == ["c", "a", "b", "d"]
    assert (total, more) == (4, False)


def test_index_remove() -> None:
    index = SessionIndex()
    index.add(*item("a", 1))
    index.remove(*item("a", 1))
    index.add(*item("a", 3, status="failed", user="v"))
    assert len(index) == 1
    assert page_ids(index, statuses=["running"]) == []
    assert page_ids(index, statuses=["failed"], user_id="v") == ["a"]
    index.remove(*item("a", 3, status="failed", user="v"))
    assert len(index) == 0
    assert page_ids(index, user_id="v") == []


def random_items(seed: int, count: int) -> dict[str, Item]:
    rng = random.Random(seed)
    reference: dict[str, Item] = {}
    for _ in range(count):
        job_id = f"job-{rng.randrange(count // 2)}"
        status = rng.choice([*STATUSES, None])
        user = rng.choice(["ann", "bob", "cy", None])
        reference[job_id] = item(job_id, rng.randrange(200), status, user)  # many ties: by id
    return reference


QUERIES = [
    (None, None, True),
    (None, None, False),
    (["running", "failed"], None, True),
    (["running", "failed"], None, False),
    (None, "bob", True),
    (None, "bob", False),
    (["pending_hitl"], "cy", True),
    (["nope"], None, True),
]


def all_pages(index: SessionIndex, statuses: list[str] | None, user: str | None, include_saved: bool) -> list[str]:
    seen: list[str] = []
    after = None
    for _ in range(1000):
        keys, _, more = index.page(statuses=statuses, user_id=user, include_saved=include_saved, after=after, limit=37)
        seen.extend(key[1] for key in keys)
        if not more:
            break
        after = keys[-1]
    return seen


def test_index_filters_and_pages_match_a_brute_force_reference() -> None:
    rng = random.Random(7)
    index = SessionIndex()
    reference: dict[str, Item] = {}
    for _ in range(3000):
        job_id = f"job-{rng.randrange(1500)}"
        if job_id in reference:
            index.remove(*reference.pop(job_id))
        if rng.random() < 0.15:
            continue
        new = item(job_id, rng.randrange(200), rng.choice([*STATUSES, None]), rng.choice(["ann", "bob", "cy", None]))
        index.add(*new)
        reference[job_id] = new
    built = SessionIndex.build(reference.values())
    for statuses, user, include_saved in QUERIES:
        expected = sorted(
            (
                entry
                for entry in reference.values()
                if (statuses is None or entry[1] in statuses)
                and (user is None or entry[2] == user)
                and (include_saved or entry[1] not in FINISHED_STATUSES)
            ),
            key=lambda entry: entry[0],
        )
        _, total, _ = index.page(statuses=statuses, user_id=user, include_saved=include_saved, after=None, limit=1)
        assert total == len(expected)
        ids = [entry[0][1] for entry in expected]
        assert all_pages(index, statuses, user, include_saved) == ids, (statuses, user, include_saved)
        assert all_pages(built, statuses, user, include_saved) == ids, "built in bulk"


# --- the store -----------------------------------------------------------------------------------


def test_lifecycle_of_a_session(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    first = write(tmp_path, "j", status="running")
    assert load(store, tmp_path, "j") is Change.ADDED
    document, stale = store.lookup("j")
    assert document is not None and document.body == first and not stale
    revision = store.revision

    second = write(tmp_path, "j", status="completed")
    assert load(store, tmp_path, "j") is Change.MODIFIED
    assert store.revision > revision
    document, _ = store.lookup("j")
    assert document is not None and document.body == second

    assert store.apply_deleted("j") is Change.DELETED
    with pytest.raises(SessionNotFound):
        store.lookup("j")
    assert store.apply_deleted("j") is Change.NONE
    assert store.stats()["sessions"] == 0


def test_rewriting_the_same_bytes_is_no_change(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    write(tmp_path, "j")
    load(store, tmp_path, "j")
    revision = store.revision
    write(tmp_path, "j")
    assert load(store, tmp_path, "j") is Change.NONE
    assert store.revision == revision


def test_invalid_after_valid_is_served_stale_until_valid_again(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    good = write(tmp_path, "j")
    load(store, tmp_path, "j")
    assert store.apply_invalid("j", 123, False, "not JSON") is Change.STALE
    document, stale = store.lookup("j")
    assert stale and document is not None and document.body == good
    assert store.stats()["invalid_files"] == 1
    assert store.stats()["sessions"] == 1  # still listed
    # the same invalid version again is not a change (logged once per change)
    assert store.apply_invalid("j", 123, False, "not JSON") is Change.NONE
    newer = write(tmp_path, "j", status="failed")
    assert load(store, tmp_path, "j") is Change.MODIFIED
    document, stale = store.lookup("j")
    assert not stale and document is not None and document.body == newer
    assert store.stats()["invalid_files"] == 0


def test_never_valid_file_is_a_404_with_its_reason(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert store.apply_invalid("j", 1, False, "not a JSON object (a list)") is Change.INVALID
    with pytest.raises(SessionFileInvalid, match="not a JSON object"):
        store.lookup("j")
    assert store.stats()["sessions"] == 0
    assert store.apply_deleted("j") is Change.DELETED
    assert store.stats()["invalid_files"] == 0


def test_stale_session_whose_last_version_was_evicted_goes_to_the_loader(tmp_path: Path) -> None:
    # Its last valid version is not in memory: the file is read again (a writer mid-write is
    # done a millisecond later), and only a file still invalid after the retries is a 503.
    store = make_store(tmp_path, entries=1)
    write(tmp_path, "a")
    write(tmp_path, "b")
    load(store, tmp_path, "a")
    load(store, tmp_path, "b")  # evicts a
    store.apply_invalid("a", 5, False, "not JSON")
    assert store.lookup("a") == (None, False)
    assert store.load_missing("a").body  # the file on disk is valid again: served
    (tmp_path / "a.json").write_bytes(b"{")
    with pytest.raises(TemporarilyUnavailable, match="being changed"):
        store.load_missing("a")
    # The loader gave up: until the file changes, a 503 at once, without tying up a loader
    # thread for its retries on every request.
    with pytest.raises(TemporarilyUnavailable, match="no longer in memory"):
        store.lookup("a")
    store.apply_invalid("a", 6, False, "not JSON")  # a new version, still invalid
    assert store.lookup("a") == (None, False)  # worth reading again


def test_cache_is_bounded_by_entries(tmp_path: Path) -> None:
    store = make_store(tmp_path, entries=3)
    for n in range(10):
        write(tmp_path, f"j{n}")
        load(store, tmp_path, f"j{n}")
    stats = store.stats()
    assert stats["cache_entries"] == 3
    assert stats["cache_evictions"] == 7
    assert stats["sessions"] == 10
    # the evicted ones are listed and miss the cache
    assert store.lookup("j0") == (None, False)
    assert store.stats()["cache_misses"] == 1


def test_cache_is_bounded_by_bytes(tmp_path: Path) -> None:
    sizes = [len(write(tmp_path, f"j{n}", padding="x" * 100)) for n in range(10)]
    store = make_store(tmp_path, entries=1000, size=sizes[0] * 4)
    for n in range(10):
        load(store, tmp_path, f"j{n}")
    stats = store.stats()
    assert stats["cache_bytes"] <= sizes[0] * 4
    assert stats["cache_entries"] == 4


def test_a_zero_cache_serves_every_read_from_disk(tmp_path: Path) -> None:
    store = make_store(tmp_path, entries=0)
    data = write(tmp_path, "j")
    load(store, tmp_path, "j")
    assert store.lookup("j") == (None, False)
    assert store.load_missing("j").body == data


def test_warm_up_caches_the_newest_sessions_that_fit(tmp_path: Path) -> None:
    store = make_store(tmp_path, entries=3)
    order = [4, 0, 7, 2, 9, 1, 8, 3, 6, 5]  # read in an order unrelated to age
    for n in order:
        write(tmp_path, f"j{n}", updated_at=f"2024-01-0{n}T00:00:00Z" if n else None)
    store.warm([sessionfile.read(tmp_path, f"j{n}", store.max_file_bytes) for n in order])
    store.finish_warm_up()
    assert store.stats()["sessions"] == 10
    cached = {f"j{n}" for n in range(10) if store.lookup(f"j{n}")[0] is not None}
    assert cached == {"j0", "j9", "j8"}  # j0 has no updated_at: its (current) mtime is newest
    keys, total, _ = store.page(statuses=None, user_id=None, include_saved=True, after=None, limit=3)[:3]
    assert total == 10


def test_invalid_during_warm_up_and_index_after(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    write(tmp_path, "a")
    store.warm([sessionfile.read(tmp_path, "a", store.max_file_bytes)])
    store.apply_invalid("b", 1, False, "not JSON")
    store.finish_warm_up()
    items, total, _, _ = store.page(statuses=None, user_id=None, include_saved=True, after=None, limit=10)
    assert total == 1 and [orjson.loads(i)["job_id"] for i in items] == ["a"]
    with pytest.raises(RuntimeError):
        store.warm([])


def test_load_missing_brings_an_evicted_session_back(tmp_path: Path) -> None:
    store = make_store(tmp_path, entries=1)
    data = write(tmp_path, "a")
    write(tmp_path, "b")
    load(store, tmp_path, "a")
    load(store, tmp_path, "b")
    assert store.lookup("a") == (None, False)
    assert store.load_missing("a").body == data
    document, _ = store.lookup("a")
    assert document is not None and document.body == data


def test_load_missing_of_a_newer_version_serves_it_and_tells_the_reconciler(tmp_path: Path) -> None:
    store = make_store(tmp_path, entries=0)
    suspects: list[str] = []
    store.on_suspect = suspects.append
    write(tmp_path, "a", status="running")
    load(store, tmp_path, "a")
    newer = write(tmp_path, "a", status="completed", note="x" * 50)
    assert store.load_missing("a").body == newer
    assert suspects == ["a"]


def test_load_missing_of_a_half_written_file_is_unavailable(tmp_path: Path) -> None:
    store = make_store(tmp_path, entries=0)
    write(tmp_path, "a")
    load(store, tmp_path, "a")
    (tmp_path / "a.json").write_bytes(b'{"job_id": "a", "sta')
    with pytest.raises(TemporarilyUnavailable, match="being changed"):
        store.load_missing("a")


def test_revisions_increase_with_every_change_to_what_is_served(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    seen = [store.revision]
    write(tmp_path, "a")
    load(store, tmp_path, "a")  # added
    seen.append(store.revision)
    write(tmp_path, "a", status="done")
    load(store, tmp_path, "a")  # a new version
    seen.append(store.revision)
    store.apply_deleted("a")
    seen.append(store.revision)
    assert seen == [0, 1, 2, 3]
    assert [(change.revision, change.old is None, change.new is None) for change in store.changes_after(0)] == [
        (1, True, False),
        (2, False, False),
        (3, False, True),
    ]


def test_what_alters_nothing_served_gets_no_revision(tmp_path: Path) -> None:
    """docs/contract.md#revisions: a touch, a served session turning stale (and back), a file that was never valid,
    and an evicted session read again with the same bytes get no revision."""
    store = make_store(tmp_path, entries=1)
    write(tmp_path, "a")
    load(store, tmp_path, "a")
    revision = store.revision
    (tmp_path / "a.json").touch()
    assert load(store, tmp_path, "a") is Change.NONE  # touched: same bytes
    assert store.apply_invalid("a", 9, False, "not JSON") is Change.STALE
    assert store.lookup("a")[1]  # served stale...
    assert load(store, tmp_path, "a") is Change.NONE  # ...and back to the same version
    assert not store.lookup("a")[1]
    assert store.apply_invalid("never", 5, False, "not JSON") is Change.INVALID
    assert store.apply_deleted("never") is Change.DELETED  # counted, but nothing served changed
    write(tmp_path, "b")
    load(store, tmp_path, "b")  # evicts "a" (one entry)
    assert store.current_document("a") is None
    assert load(store, tmp_path, "a") is Change.NONE  # decided on the ETag the entry keeps
    assert store.revision == revision + 1  # "b" only
