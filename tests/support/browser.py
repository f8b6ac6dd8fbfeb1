"""A real headless browser for the page's tests: Debian's Chromium (`/usr/bin/chromium`, which
.ci/run installs), driven by playwright from PyPI. Never `playwright install`, never a browser
downloaded by playwright. One browser per module; each test gets a context of its own."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from playwright.sync_api import Browser, Page, sync_playwright

from tests.support import wait_until

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    *("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"),
    *("--disable-component-update", "--disable-sync", "--no-first-run"),
]
TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")

# A bare EventSource, as a page would open one: every event and state change in window.esLog.
RECORD_EVENT_SOURCE = (
    "(url) => {\n  const TYPES = "
    + json.dumps(TYPES)
    + """;
  window.esLog = [];
  const source = new EventSource(url);
  window.es = source;
  for (const type of TYPES) {
    source.addEventListener(type, (event) =>
      window.esLog.push({kind: type, id: event.lastEventId, data: JSON.parse(event.data)}));
  }
  source.addEventListener("open", () => window.esLog.push({kind: "open"}));
  source.addEventListener("error", () => window.esLog.push({kind: "error", state: source.readyState}));
}"""
)


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def event_log(page: Page) -> list[dict[str, Any]]:
    log: list[dict[str, Any]] = page.evaluate("window.esLog")
    return log


def rows(page: Page) -> list[str]:
    listed: list[str] = page.eval_on_selector_all("#rows tr", "rows => rows.map(row => row.dataset.job)")
    return listed


def cells(page: Page, job_id: str) -> list[str]:
    texts: list[str] = page.eval_on_selector_all(
        f'#rows tr[data-job="{job_id}"] td', "cells => cells.map(cell => cell.textContent)"
    )
    return texts


def state(page: Page) -> str:
    value: str = page.eval_on_selector("#state", "element => element.dataset.state")
    return value


def wait_page(page: Page, condition: Any, timeout: float = 15.0, what: str = "") -> Any:
    """Wait for `condition(page)`, a read of the page from Python, with a deadline."""
    return wait_until(lambda: condition(page), timeout=timeout, interval=0.05, what=what)
