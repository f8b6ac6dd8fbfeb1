"""The change hub's bookkeeping of a stream's last bookmark, driven directly (the real store, a
real event loop; no server): the races here are between callbacks of one loop, which tests
through the real server meet only by chance (the loaded runs of issue 9 met this one: a client
resumed from a stale bookmark and got three events twice)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from app.api.problems import error_body
from app.changes.hub import ChangeHub
from app.changes.streams import End, Format, Kind, Stream
from app.settings import Settings
from app.store.index import SessionFilter
from app.store.loader import MissLoader
from app.store.store import SessionStore
from tests.test_store import load, make_store, write

EVERYONE = SessionFilter(None, None, True)


def hub_over(root: Path) -> tuple[SessionStore, ChangeHub]:
    store = make_store(root)
    store.finish_warm_up()
    settings = Settings(sessions_dir=root, bookmark_s=0.001)
    return store, ChangeHub(store, MissLoader(store, ThreadPoolExecutor(1)), settings, error_body)


def last_bookmark_revision(stream: Stream) -> bytes:
    final = stream._final() if stream._final is not None else None  # noqa: SLF001 (what pump writes last)
    assert final is not None
    event = orjson.loads(final)
    assert event["type"] == "BOOKMARK"
    return str(event["revision"]).encode()


def test_an_ended_live_stream_bookmarks_what_it_was_given(tmp_path: Path) -> None:
    """A live stream ends (its lifetime, or the drain); before its task writes the last bookmark,
    more changes are delivered (never to it: it has ended) and the heartbeat sweep drops it.
    The last bookmark must name the revision it had at its end: neither a later one (its client
    would skip those changes) nor its catch-up position from when it opened (its client would
    get everything since then twice)."""

    async def scenario() -> None:
        store, hub = hub_over(tmp_path)
        hub.start()
        try:
            opened_at = hub.token(hub.delivered)
            stream = Stream(Kind.COLLECTION, Format.NDJSON, hub.touch)
            hub.open_stream(stream)
            stream.position = hub.delivered  # caught up, as watches._catch_up leaves it
            hub.attach_collection(stream, EVERYONE)
            for job_id in ("a", "b"):
                write(tmp_path, job_id)
                load(store, tmp_path, job_id)
            hub.deliver_now()
            given = hub.token(hub.delivered)
            assert stream.take().count(b"\n") == 2 and given != opened_at

            hub._end(stream, End.TIMEOUT)  # noqa: SLF001 (what its lifetime's deadline calls)
            write(tmp_path, "c")
            load(store, tmp_path, "c")
            hub.deliver_now()  # not to the ended stream
            assert stream.take() == b""
            await asyncio.sleep(0.01)
            hub.send_due_bookmarks()  # drops the ended stream from the heartbeat's order
            assert last_bookmark_revision(stream) == given
        finally:
            await hub.close()

    asyncio.run(scenario())


def test_a_stream_ended_while_catching_up_bookmarks_its_position(tmp_path: Path) -> None:
    async def scenario() -> None:
        store, hub = hub_over(tmp_path)
        hub.start()
        try:
            stream = Stream(Kind.COLLECTION, Format.NDJSON, hub.touch)
            hub.open_stream(stream)
            stream.position = hub.delivered
            sent_up_to = hub.token(hub.delivered)
            write(tmp_path, "a")
            load(store, tmp_path, "a")
            hub.deliver_now()  # the stream is not live yet: its catch-up would send this
            hub.drain()
            assert last_bookmark_revision(stream) == sent_up_to
            never_live = Stream(Kind.COLLECTION, Format.NDJSON, hub.touch)
            hub.open_stream(never_live)
            hub._end(never_live, End.DRAIN)  # noqa: SLF001
            assert never_live._final is not None and never_live._final() is None  # noqa: SLF001 (no state yet)
        finally:
            await hub.close()

    asyncio.run(scenario())
