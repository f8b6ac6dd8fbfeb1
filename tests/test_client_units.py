"""The callers' library's decisions, without I/O (client/src/sessions_client: wire, backoff,
reflector, polling): each fed the server's bytes as the server writes them. The same
machines run inside the sync and async clients, which the integration tests drive against
the real server (test_client_reads, test_client_watch, test_client_failover)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from sessions_client import Backoff, EventType, Filter, NotFound, Session, SessionDeleted, Unauthorized, WaitTimeout
from sessions_client.backoff import READ_RETRY_STATUSES, ReadRetries, read_retry_delay
from sessions_client.errors import Gone, Unavailable, problem_from
from sessions_client.models import Page, Summary
from sessions_client.polling import ETagCache, Waiting, assemble
from sessions_client.reflector import CollectionReflector, JobReflector, diff
from sessions_client.wire import LineDecoder, applied_wait, job_path, next_query


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def line(type_: str, revision: str, obj: Any = None, **extra: Any) -> bytes:
    event: dict[str, Any] = {"type": type_, "revision": revision, **extra}
    if obj is not None:
        event["object"] = obj
    return json.dumps(event).encode()


def item(job_id: str, status: str = "running", user_id: str = "u") -> dict[str, Any]:
    return {"job_id": job_id, "status": status, "user_id": user_id, "created_at": None, "updated_at": None}


def summary(job_id: str, status: str = "running") -> Summary:
    return Summary.from_json(item(job_id, status))


# --- wire ------------------------------------------------------------------------------------------


def test_lines_split_only_on_newlines_whatever_the_chunks() -> None:
    events = [line("ADDED", "b.1", item("a\u2028b")), line("BOOKMARK", "b.2")]
    body = b"\n".join(events) + b"\n"
    for size in (1, 2, 7, len(body)):
        decoder = LineDecoder()
        lines = [found for start in range(0, len(body), size) for found in decoder.feed(body[start : start + size])]
        assert lines == events and not decoder.pending


def test_a_line_past_the_limit_is_a_protocol_error() -> None:
    decoder = LineDecoder(limit=100)
    decoder.feed(b"x" * 60)
    with pytest.raises(Exception, match="longer than 100"):
        decoder.feed(b"y" * 60)


@pytest.mark.parametrize(
    ("link", "query"),
    [
        ('</api/v2/jobs?limit=2&cursor=abc>; rel="next"', "limit=2&cursor=abc"),
        ("<http://other/prefix/api/v2/jobs?cursor=x%2By>; rel=next", "cursor=x%2By"),
        ('</a?p=1>; rel="prev", </a?p=3>; rel="next"', "p=3"),
        ('</a?p=1>; rel="prev"', None),
        (None, None),
    ],
)
def test_the_next_page_is_the_links_query(link: str | None, query: str | None) -> None:
    assert next_query(link) == query


@pytest.mark.parametrize("job_id", ["..", "../x", "a/b", "", ".hidden", "x" * 129, "é"])
def test_job_ids_are_checked_before_any_url_is_built(job_id: str) -> None:
    with pytest.raises(ValueError):
        job_path(job_id)


def test_problems_become_typed_exceptions() -> None:
    body = json.dumps({"type": "/problems/x", "title": "Too many streams", "status": 503, "detail": "at most 2"})
    problem = problem_from(503, {"retry-after": "1"}, body.encode())
    assert isinstance(problem, Unavailable) and problem.retry_after == 1.0 and problem.detail == "at most 2"
    assert isinstance(problem_from(401, {}, b""), Unauthorized)
    assert isinstance(problem_from(410, {}, b"<html>"), Gone)
    assert applied_wait({"preference-applied": "wait=30"}) == 30.0 and applied_wait({}) is None


# --- backoff ----------------------------------------------------------------------------------------


def test_backoff_is_full_jitter_under_a_doubling_bound() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, rng=random.Random(7))
    assert [backoff.bound(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    delays = [backoff.delay(3) for _ in range(2000)]
    assert 0 <= min(delays) < 0.1 and 1.9 < max(delays) <= 2.0  # spread over the whole interval
    assert backoff.bound(10_000) == 4.0  # no overflow
    assert 5.0 <= backoff.delay(1, retry_after=5) <= 5.5  # Retry-After in full, plus jitter


# --- the collection reflector -------------------------------------------------------------------------


def test_initial_state_then_changes_and_the_resume_revision() -> None:
    reflector = CollectionReflector(Filter(), Backoff(), clock=Clock())
    path, params, _ = reflector.target()
    assert path == "/api/v2/jobs" and params == {"watch": "true"}
    assert reflector.receive(line("ADDED", "b.2", item("a"))) == []
    assert reflector.receive(line("ADDED", "b.2", item("b"))) == []
    assert reflector.revision is None  # never resume from inside an initial state
    events = reflector.receive(line("BOOKMARK", "b.2", initial_events_end=True))
    assert [(event.type, event.job_id) for event in events] == [
        (EventType.ADDED, "a"),
        (EventType.ADDED, "b"),
        (EventType.BOOKMARK, None),
    ]
    assert events[-1].synced and reflector.revision == "b.2"
    [modified] = reflector.receive(line("MODIFIED", "b.3", item("a", "completed")))
    assert modified.type is EventType.MODIFIED and modified.old is not None and modified.old.status == "running"
    [deleted] = reflector.receive(line("DELETED", "b.4", item("b")))
    assert deleted.type is EventType.DELETED
    assert reflector.receive(line("BOOKMARK", "b.9"))[0].type is EventType.BOOKMARK
    assert reflector.target()[1] == {"watch": "true", "revision": "b.9"}
    assert set(reflector.state) == {"a"}


def test_a_stream_cut_inside_the_initial_state_starts_again() -> None:
    reflector = CollectionReflector(Filter(), Backoff(), clock=Clock())
    reflector.target()
    reflector.receive(line("ADDED", "b.2", item("a")))
    reflector.ended(ConnectionError("reset"))
    assert reflector.target()[1] == {"watch": "true"}
    reflector.receive(line("ADDED", "b.3", item("c")))
    events = reflector.receive(line("BOOKMARK", "b.3", initial_events_end=True))
    assert [event.job_id for event in events if event.object] == ["c"] and set(reflector.state) == {"c"}


@pytest.mark.parametrize("how", ["status", "event"])
def test_a_410_relists_and_sends_only_the_difference(how: str) -> None:
    reflector = CollectionReflector(Filter(), Backoff(), clock=Clock())
    reflector.target()
    for job_id in ("same", "changed", "gone"):
        reflector.receive(line("ADDED", "a.5", item(job_id)))
    reflector.receive(line("BOOKMARK", "a.5", initial_events_end=True))
    if how == "status":
        reflector.target()
        reflector.refused(410, {}, b'{"status": 410, "title": "Revision expired"}')
    else:
        error = {"type": "/problems/stream-fell-behind", "title": "Stream fell behind", "status": 410, "detail": "x"}
        assert reflector.receive(line("ERROR", "a.9", error)) == []
        assert reflector.broken
        reflector.ended(None)
    assert reflector.relists == 1 and reflector.target()[1] == {"watch": "true"}
    reflector.receive(line("ADDED", "b.1", item("new")))
    reflector.receive(line("ADDED", "b.1", item("same")))
    reflector.receive(line("ADDED", "b.1", item("changed", "failed")))
    events = reflector.receive(line("BOOKMARK", "b.1", initial_events_end=True))
    assert [(event.type, event.job_id) for event in events] == [
        (EventType.DELETED, "gone"),
        (EventType.ADDED, "new"),
        (EventType.MODIFIED, "changed"),
        (EventType.BOOKMARK, None),
    ]


def test_without_initial_events_the_first_state_is_kept_not_sent() -> None:
    reflector = CollectionReflector(Filter(), Backoff(), initial_events=False, clock=Clock())
    reflector.target()
    reflector.receive(line("ADDED", "b.1", item("a")))
    events = reflector.receive(line("BOOKMARK", "b.1", initial_events_end=True))
    assert [event.type for event in events] == [EventType.BOOKMARK]
    assert [event.type for event in reflector.receive(line("MODIFIED", "b.2", item("a", "failed")))] == [
        EventType.MODIFIED
    ]


def test_errors_that_retrying_cannot_fix_are_raised_and_the_rest_back_off() -> None:
    clock = Clock()
    reflector = CollectionReflector(Filter(), Backoff(initial=1, maximum=8, rng=random.Random(1)), clock=clock)
    with pytest.raises(Unauthorized):
        reflector.refused(401, {}, b"")
    delays = [reflector.refused(503, {"retry-after": "1"}, b"") for _ in range(5)]
    assert all(delay >= 1 for delay in delays) and max(delays) <= 9
    reflector.opened()
    clock.now += 5  # a healthy stream: the backoff starts again
    assert reflector.ended(None) <= 1
    reflector.opened()
    assert reflector.ended(None) <= 2  # ended at once with nothing: a failure


def test_diff_is_nothing_for_what_did_not_change() -> None:
    before = {"a": summary("a"), "b": summary("b")}
    assert diff(before, dict(before), "r") == []


def test_since_a_list_of_one_revision_resumes_from_it() -> None:
    listed = assemble(Filter(), [Page((summary("a"),), "b.4", 1, None)])
    reflector = CollectionReflector(Filter(), Backoff(), since=listed)
    assert reflector.target()[1] == {"watch": "true", "revision": "b.4"}
    assert set(reflector.state) == {"a"}
    with pytest.raises(ValueError):
        CollectionReflector(Filter(user_id="x"), Backoff(), since=listed)


def test_pages_of_several_revisions_have_no_revision() -> None:
    pages = [Page((summary("a"), summary("b")), "b.4", 3, "cursor=1"), Page((summary("a"),), "b.5", 3, None)]
    listed = assemble(Filter(), pages)
    assert listed.revision is None and [s.job_id for s in listed] == ["b", "a"] and listed.pages == 2
    assert assemble(Filter(), [pages[0], Page((summary("c"),), "b.4", 3, None)]).revision == "b.4"


# --- the job reflector ----------------------------------------------------------------------------------


def test_a_job_watch_resumes_by_etag_and_translates_types() -> None:
    reflector = JobReflector("j", Backoff())
    assert reflector.target() == ("/api/v2/jobs/j", {"watch": "true"}, {})
    [added] = reflector.receive(line("ADDED", "b.1", {"job_id": "j", "v": 1}, etag='"e1"'))
    assert added.type is EventType.ADDED and added.session is not None and added.session.etag == '"e1"'
    assert reflector.target()[2] == {"Last-Event-ID": '"e1"'}
    assert reflector.receive(line("ADDED", "b.7", {"job_id": "j", "v": 1}, etag='"e1"')) == []  # had it
    [modified] = reflector.receive(line("ADDED", "b.8", {"job_id": "j", "v": 2}, etag='"e2"'))
    assert modified.type is EventType.MODIFIED and modified.old == added.session  # a resume's ADDED
    [deleted] = reflector.receive(line("DELETED", "b.9", None, etag='"e2"'))
    assert deleted.type is EventType.DELETED and deleted.session == modified.session
    assert reflector.target()[2] == {}  # naming the deleted version would repeat the DELETED
    assert reflector.receive(line("DELETED", "b.9", None, etag='"e2"')) == []


# --- the long poll -------------------------------------------------------------------------------------


def session_answer(etag: str, status: str) -> tuple[int, dict[str, str], bytes]:
    return 200, {"etag": etag}, json.dumps({"job_id": "j", "status": status}).encode()


def test_wait_long_polls_from_the_version_it_has() -> None:
    clock = Clock()
    cache = ETagCache(10)
    waiting = Waiting("j", lambda s: s.status == "completed", 100, 10, Backoff(), cache, clock)
    assert waiting.request().headers == {}
    assert waiting.answered(*session_answer('"e1"', "running")) is None
    poll = waiting.request()
    assert poll.headers == {"If-None-Match": '"e1"', "Prefer": "wait=100"} and poll.timeout == 100
    clock.now += 30
    assert waiting.answered(304, {"preference-applied": "wait=30", "etag": '"e1"'}, b"") is None
    assert waiting.pause() == 0
    assert waiting.request().headers["Prefer"] == "wait=70"
    done = waiting.answered(*session_answer('"e2"', "completed"))
    assert done is not None and cache.get("j") == done


def test_a_304_that_did_not_wait_backs_off_instead_of_spinning() -> None:
    clock = Clock()
    waiting = Waiting("j", lambda s: False, 100, 10, Backoff(initial=1, maximum=8), ETagCache(10), clock)
    waiting.request()
    waiting.answered(*session_answer('"e1"', "running"))
    pauses = []
    for _ in range(4):
        waiting.request()
        waiting.answered(304, {"preference-applied": "wait=60"}, b"")  # at once: a draining replica
        pauses.append(waiting.pause())
    assert all(pause >= 0 for pause in pauses) and sum(pauses) > 0


def test_wait_outcomes() -> None:
    clock = Clock()
    waiting = Waiting("j", lambda s: False, 5, 10, Backoff(), ETagCache(10), clock)
    waiting.request()
    with pytest.raises(NotFound) as missing:
        waiting.answered(404, {}, b"")
    assert not isinstance(missing.value, SessionDeleted)
    waiting.answered(*session_answer('"e1"', "running"))
    waiting.request()
    with pytest.raises(SessionDeleted):
        waiting.answered(404, {}, b"")
    clock.now += 6
    with pytest.raises(WaitTimeout) as late:
        waiting.request()
    assert isinstance(late.value.session, Session) and late.value.session.etag == '"e1"'


def test_read_retries_are_bounded_and_honour_retry_after() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, rng=random.Random(3))
    assert [read_retry_delay(backoff, n, 2, None, 10.0) is None for n in (1, 2, 3)] == [False, False, True]
    assert all(0 <= read_retry_delay(backoff, 1, 2, None, 10.0) <= 0.1 for _ in range(50))  # type: ignore[operator]
    assert 2.0 <= read_retry_delay(backoff, 1, 2, 2.0, 10.0) <= 2.1  # type: ignore[operator]
    assert read_retry_delay(backoff, 1, 2, 60.0, 5.0) == 5.0  # never longer than the client's timeout
    assert read_retry_delay(backoff, 1, 0, None, 5.0) is None
    assert 503 in READ_RETRY_STATUSES and 500 not in READ_RETRY_STATUSES

    tries = ReadRetries(backoff, 2, 10.0)
    assert tries.after_response(200, None) is None and tries.after_response(404, None) is None
    assert tries.after_response(500, None) is None, "a bug stays a bug: not retried"
    assert 1.0 <= tries.after_response(503, 1.0) <= 1.1  # type: ignore[operator]
    assert tries.after_error() is not None  # the second retry
    assert tries.after_response(502, None) is None and tries.failed == 3, "two retries, then the answer"


def test_a_collection_watch_names_itself_to_the_load_balancer() -> None:
    """The same key on every stream of one watch (its resumes hash to one replica), another for
    each watch (watches spread); job watches hash on the job id and send none."""
    one, two = CollectionReflector(Filter(), Backoff()), CollectionReflector(Filter(), Backoff())
    keys = {one.target()[2]["X-Sessions-Client"] for _ in range(3)}
    assert keys == {one.key} and len(one.key) == 16 and one.key != two.target()[2]["X-Sessions-Client"]
    assert "X-Sessions-Client" not in JobReflector("j", Backoff()).target()[2]
