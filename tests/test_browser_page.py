"""The live jobs page at `/` and the SSE streams it lives on, in a real headless Chromium
(tests/support/browser.py): it lists the folder and follows it over one collection watch,
filters, follows a document over its job watch, works with a token, and survives what an
EventSource cannot handle by itself: an expired revision, a 503, a server restart."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from tests.support import Server, put_session
from tests.support.browser import RECORD_EVENT_SOURCE, cells, chromium, event_log, rows, state, wait_page
from tests.support.ops import scrape, wait_for_scrape
from tests.support.watch import Watch

pytestmark = pytest.mark.slow  # a real Chromium

Serve = Callable[..., Server]
Open = Callable[..., Watch]
TOKEN = "page-Token_0123456789"
# Streams that are ended and reconnected: a short bookmark keeps the page's reads quick.
FAST = {"SESSIONS_BOOKMARK_S": "1"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    yield opened
    context.close()


def _folder(sessions_dir: Path) -> None:
    put_session(sessions_dir, "alpha", status="running", user_id="ann", updated_at="2024-05-01T12:00:03Z")
    put_session(sessions_dir, "bravo", status="pending_hitl", user_id="bob", updated_at="2024-05-01T12:00:02Z")
    put_session(sessions_dir, "charlie", status="completed", user_id="ann", updated_at="2024-05-01T12:00:01Z")


def _live(page: Page) -> bool:
    return state(page) in ("live", "resynced")


def test_the_page_lists_the_folder_and_follows_changes(sessions_dir: Path, serve: Serve, page: Page) -> None:
    _folder(sessions_dir)
    server = serve(sessions_dir, env=FAST)
    response = page.goto(server.base_url + "/")
    assert response is not None and response.status == 200
    wait_page(page, lambda p: rows(p) == ["alpha", "bravo", "charlie"], what="the folder, newest first")
    wait_page(page, _live, what="live")
    assert cells(page, "bravo")[1:3] == ["pending_hitl", "bob"]
    assert page.text_content("#count") == "3 sessions"

    put_session(sessions_dir, "delta", status="running", user_id="dee", updated_at="2024-05-01T12:00:04Z")
    wait_page(page, lambda p: rows(p)[:1] == ["delta"], what="a new session")
    put_session(sessions_dir, "bravo", status="completed", user_id="bob", updated_at="2024-05-01T12:00:02Z")
    wait_page(page, lambda p: cells(p, "bravo")[1:2] == ["completed"], what="a changed status")
    os.remove(sessions_dir / "alpha.json")
    wait_page(page, lambda p: rows(p) == ["delta", "bravo", "charlie"], what="a deletion")
    # one collection watch, and nothing polled
    stats = scrape(server)
    assert stats.value("sessions_streams_open", kind="collection") == 1
    assert stats.value("sessions_streams_open", kind="job") == 0


def test_filters_use_one_collection_watch(sessions_dir: Path, serve: Serve, page: Page) -> None:
    _folder(sessions_dir)
    server = serve(sessions_dir, env=FAST)
    page.goto(server.base_url + "/")
    wait_page(page, lambda p: len(rows(p)) == 3, what="the folder")
    page.select_option("#status", "running")
    wait_page(page, lambda p: rows(p) == ["alpha"], what="status=running")
    assert "status=running" in page.url
    page.select_option("#status", "")
    page.fill("#user", "ann")
    wait_page(page, lambda p: rows(p) == ["alpha", "charlie"], what="user_id=ann")
    page.check("#unfinished")
    wait_page(page, lambda p: rows(p) == ["alpha"], what="ann's unfinished sessions")
    # a session that starts matching the filters appears; one that stops matching goes
    put_session(sessions_dir, "echo", status="pending", user_id="ann", updated_at="2024-05-01T12:00:05Z")
    wait_page(page, lambda p: rows(p) == ["echo", "alpha"], what="a session that starts matching")
    put_session(sessions_dir, "alpha", status="failed", user_id="ann", updated_at="2024-05-01T12:00:03Z")
    wait_page(page, lambda p: rows(p) == ["echo"], what="a session that stops matching")
    wait_for_scrape(
        server, lambda s: s.value("sessions_streams_open", kind="collection") == 1, what="one collection watch"
    )
    # the filters are in the address: a reload shows the same view
    page.reload()
    wait_page(page, lambda p: rows(p) == ["echo"], what="the same view after a reload")
    assert page.input_value("#user") == "ann"


def test_a_document_is_followed_live(sessions_dir: Path, serve: Serve, page: Page) -> None:
    _folder(sessions_dir)
    server = serve(sessions_dir, env=FAST)
    page.goto(server.base_url + "/")
    wait_page(page, lambda p: "bravo" in rows(p), what="the folder")
    page.click('#rows tr[data-job="bravo"]')
    wait_page(page, lambda p: '"status": "pending_hitl"' in (p.text_content("#document") or ""), what="the document")
    put_session(sessions_dir, "bravo", status="running", user_id="bob", note="<b>not markup</b>")
    wait_page(page, lambda p: '"note": "<b>not markup</b>"' in (p.text_content("#document") or ""), what="a version")
    assert page.query_selector("#document b") is None  # shown as text, never as HTML
    assert "job=bravo" in page.url
    os.remove(sessions_dir / "bravo.json")
    wait_page(page, lambda p: "deleted" in (p.text_content("#detail-meta") or ""), what="the deletion")
    put_session(sessions_dir, "bravo", status="completed", user_id="bob")
    wait_page(page, lambda p: '"status": "completed"' in (p.text_content("#document") or ""), what="back again")
    assert "deleted" not in (page.text_content("#detail-meta") or "")


def test_the_page_with_a_token(sessions_dir: Path, serve: Serve, page: Page) -> None:
    _folder(sessions_dir)
    server = serve(sessions_dir, env={**FAST, "SESSIONS_API_TOKEN": TOKEN})
    response = page.goto(server.base_url + "/")  # the page itself needs no token; its data does
    assert response is not None and response.status == 200
    wait_page(page, lambda p: state(p) == "unauthorized", what="a token asked for")
    assert rows(page) == []
    page.fill("#token", TOKEN)
    page.click("#token-save")
    wait_page(page, lambda p: len(rows(p)) == 3, what="the folder, with the token")
    page.click('#rows tr[data-job="alpha"]')
    wait_page(page, lambda p: '"job_id": "alpha"' in (p.text_content("#document") or ""), what="a job watch")
    # a link with the token in its fragment (never sent to the server) works too, and the
    # token leaves the address bar at once
    other = page.context.new_page()
    other.goto(server.base_url + f"/#status=running&access_token={TOKEN}")
    wait_page(other, lambda p: rows(p) == ["alpha"], what="the folder from a link")
    assert TOKEN not in other.url and "status=running" in other.url
    assert TOKEN not in server.log_path.read_text(errors="replace")


def test_an_event_source_starts_over_after_an_expired_revision(sessions_dir: Path, serve: Serve, page: Page) -> None:
    """A bare EventSource resumes with its last id; the server restarted, so the revision is
    gone. The answer resets the browser's id and it reconnects by itself to a fresh state."""
    put_session(sessions_dir, "alpha")
    server = serve(sessions_dir, env=FAST)
    page.goto(server.base_url + "/livez")  # any page of the origin
    page.evaluate(RECORD_EVENT_SOURCE, "/api/v2/jobs?watch=true")
    wait_page(page, lambda p: any(e.get("data", {}).get("initial_events_end") for e in event_log(p)), what="synced")
    port = int(server.base_url.rsplit(":", 1)[1])
    server.stop()
    put_session(sessions_dir, "bravo")  # while it is down
    serve(sessions_dir, env=FAST, port=port)

    def started_over(p: Page) -> bool:
        log = event_log(p)
        errors = [n for n, e in enumerate(log) if e["kind"] == "ERROR"]
        if not errors or log[errors[-1]]["data"]["object"]["status"] != 410:
            return False
        after = log[errors[-1] + 1 :]
        added = {e["data"]["object"]["job_id"] for e in after if e["kind"] == "ADDED"}
        return added == {"alpha", "bravo"} and any(e.get("data", {}).get("initial_events_end") for e in after)

    wait_page(page, started_over, timeout=30, what="a fresh initial state after the 410")
    log = event_log(page)
    error = next(e for e in log if e["kind"] == "ERROR" and e["data"]["object"]["status"] == 410)
    assert error["id"] == "", "the ERROR clears the last event id"
    assert page.evaluate("window.es.readyState") == 1  # OPEN: never closed for good


def test_a_503_is_honoured_with_a_retry(sessions_dir: Path, serve: Serve, watch: Open, page: Page) -> None:
    _folder(sessions_dir)
    server = serve(sessions_dir, env={**FAST, "SESSIONS_MAX_STREAMS": "1"})
    holder = watch(server, "/api/v2/jobs/alpha?watch=true")  # takes the only stream
    assert holder.wait_status() == 200
    page.goto(server.base_url + "/")
    wait_page(page, lambda p: state(p) == "unavailable", what="the page told the service is busy")
    assert page.evaluate("document.querySelector('#state').textContent").endswith("Too many streams")
    holder.close()
    # the browser retries after Retry-After (1 s, spread to 2 s), without a reload
    wait_page(page, lambda p: len(rows(p)) == 3 and _live(p), timeout=20, what="the folder once a stream is free")


def test_a_server_restart_under_the_open_page(sessions_dir: Path, serve: Serve, page: Page) -> None:
    _folder(sessions_dir)
    server = serve(sessions_dir, env=FAST)
    page.goto(server.base_url + "/")
    wait_page(page, lambda p: len(rows(p)) == 3 and _live(p), what="the folder")
    page.click('#rows tr[data-job="alpha"]')
    wait_page(page, lambda p: '"status": "running"' in (p.text_content("#document") or ""), what="a document")
    port = int(server.base_url.rsplit(":", 1)[1])
    server.stop()
    os.remove(sessions_dir / "charlie.json")
    put_session(sessions_dir, "delta", status="running", user_id="dee", updated_at="2024-05-01T12:00:04Z")
    put_session(sessions_dir, "alpha", status="completed", user_id="ann", updated_at="2024-05-01T12:00:03Z")
    wait_page(page, lambda p: state(p) != "live", what="the page to see the server go")
    serve(sessions_dir, env=FAST, port=port)
    wait_page(page, lambda p: rows(p) == ["delta", "alpha", "bravo"], timeout=30, what="the folder's new state")
    wait_page(page, lambda p: state(p) == "resynced", what="resynced shown")
    wait_page(page, lambda p: '"status": "completed"' in (p.text_content("#document") or ""), what="the document")


def test_the_page_is_served_from_memory_with_etags(sessions_dir: Path, serve: Serve) -> None:
    server = serve(sessions_dir)
    for path, kind in [("/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css")]:
        response = server.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
        assert response.headers["cache-control"] == "no-cache"
        etag = response.headers["etag"]
        again = server.get(path, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        assert server.client.head(path).headers["etag"] == etag
    page_html = server.get("/").text
    assert "http://" not in page_html and "https://" not in page_html  # nothing from outside
    assert "default-src 'none'" in server.get("/").headers["content-security-policy"]
    assert server.client.post("/").status_code == 405
