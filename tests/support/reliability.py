"""Helpers for the reliability suite (tests/test_reliability_*.py): what the folder says the
service must serve, scrapes, log searches, process figures from /proc, and real fault injection
(inotify limits in a private user namespace, file descriptor limits with prlimit)."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.support import Server, wait_until
from tests.support.ops import scrape

FINISHED = {"completed", "failed", "cancelled"}


# --- what the service says ---------------------------------------------------------------------


def metric(server: Server, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when absent, like a counter never touched)."""
    return scrape(server).value(name, **labels)


def logged(server: Server, message: str, **fields: Any) -> list[dict[str, Any]]:
    """Structured log entries whose message starts with `message` and that carry `fields`.
    The server writes its log in large writes up to 100 ms late: wait for a line that must come
    (`wait_until`), and call `logs_settled` before counting lines or checking one is absent."""
    return [
        entry
        for entry in server.json_logs()
        if str(entry.get("message", "")).startswith(message)
        and all(entry.get(key) == value for key, value in fields.items())
    ]


def logs_settled(server: Server, timeout: float = 10.0) -> None:
    """Wait until every line the server logged before this call is in its log file. Its lines
    are written in order, so once the access line of a request made now is there, so is every
    line before it. (Needs the access log: the default level.)"""
    marker = f"settle-{uuid.uuid4().hex}"
    assert server.get("/livez", headers={"X-Request-ID": marker}).status_code == 200
    wait_until(
        lambda: any(entry.get("request_id") == marker for entry in server.json_logs()),
        timeout,
        what="the log written up to now",
    )


def all_pages(client: httpx.Client, query: str = "", limit: int = 7, max_pages: int = 1000) -> tuple[list[Any], int]:
    """Every item of the list, following `Link: rel="next"` pages; and X-Total-Count."""
    target = f"/api/v2/jobs?limit={limit}" + (f"&{query}" if query else "")
    items: list[Any] = []
    total = -1
    for _ in range(max_pages):
        response = client.get(target)
        assert response.status_code == 200, (target, response.status_code, response.text[:300])
        total = int(response.headers["x-total-count"])
        items.extend(response.json())
        following = response.links.get("next")
        if following is None:
            return items, total
        target = following["url"]
    raise AssertionError(f"more than {max_pages} pages")


# --- what the folder says ----------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What GET /api/v2/jobs/{id} must answer: status, body (200), stale header, and the list
    item (for listed sessions) with its sort key."""

    status: int
    body: bytes | None = None
    stale: bool = False
    item: dict[str, Any] | None = None
    sort_key: tuple[int, str] | None = None


def summary_of(job_id: str, body: bytes) -> dict[str, Any]:
    doc = orjson.loads(body)
    return {
        "job_id": job_id,
        "status": doc.get("status"),
        "user_id": doc.get("user_id"),
        "created_at": doc.get("created_at"),
        "updated_at": doc.get("updated_at"),
    }


def expected_list(expectations: dict[str, Expected]) -> list[dict[str, Any]]:
    listed = [e for e in expectations.values() if e.item is not None]
    listed.sort(key=lambda e: e.sort_key or (0, ""))
    return [e.item for e in listed if e.item is not None]


def service_agrees(client: httpx.Client, expectations: dict[str, Expected], page_size: int = 7) -> str | None:
    """None when every GET, the paged list, X-Total-Count and readiness's count agree with the
    expectations; otherwise what differs (for the failure message)."""
    for job_id, expected in expectations.items():
        response = client.get(f"/api/v2/jobs/{job_id}")
        if response.status_code != expected.status:
            return f"{job_id}: status {response.status_code} != {expected.status} ({response.text[:200]})"
        stale = response.headers.get("x-session-stale") == "true"
        if expected.status == 200 and (response.content != expected.body or stale != expected.stale):
            return f"{job_id}: body or stale ({stale}) differs from expected (stale {expected.stale})"
        if (
            expected.status == 200
            and "x-session-stale" in response.headers
            and response.headers["x-session-stale"] != "true"
        ):
            return f"{job_id}: X-Session-Stale {response.headers['x-session-stale']!r}"
    want = expected_list(expectations)
    items, total = all_pages(client, limit=page_size)
    if items != want:
        return f"list differs:\n got  {[i['job_id'] for i in items]}\n want {[i['job_id'] for i in want]}"
    if total != len(want):
        return f"X-Total-Count {total} != {len(want)}"
    ready = client.get("/readyz")
    if ready.status_code != 200 or ready.json()["sessions"] != len(want):
        return f"/readyz {ready.status_code} {ready.text} but {len(want)} sessions are listed"
    return None


def folder_expectations(folder: Path, job_ids: Iterable[str]) -> dict[str, Expected]:
    """For a folder of only valid files (or none): what each id must answer. Sort keys use the
    document's updated_at when it is a plain UTC `...Z` stamp, else the file's mtime."""
    expectations = {}
    for job_id in job_ids:
        path = folder / f"{job_id}.json"
        try:
            body = path.read_bytes()
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            expectations[job_id] = Expected(404)
            continue
        item = summary_of(job_id, body)
        expectations[job_id] = Expected(200, body, False, item, (-_instant(item["updated_at"], mtime), job_id))
    return expectations


def _instant(updated_at: Any, mtime_ns: int) -> int:
    from datetime import datetime

    if isinstance(updated_at, str):
        try:
            return int(datetime.fromisoformat(updated_at.replace("Z", "+00:00")).timestamp()) * 1_000_000_000
        except ValueError:
            pass
    return mtime_ns


def folder_agrees(server: Server, folder: Path) -> str | None:
    """The service agrees with a folder of valid session files (and nothing else)."""
    ids = {path.stem for path in folder.glob("*.json")}
    listed = {item["job_id"] for item in all_pages(server.client, limit=1000)[0]}
    return service_agrees(server.client, folder_expectations(folder, ids | listed), page_size=1000)


# --- the process -----------------------------------------------------------------------------------


def process_figures(pid: int) -> dict[str, int]:
    """Open file descriptors, threads and resident bytes of a process, from /proc."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(status["Threads"]),
        "rss": int(status["VmRSS"].split()[0]) * 1024,
    }


def wait_quiet_figures(pid: int, settle_s: float = 1.0, timeout: float = 15.0) -> dict[str, int]:
    """Figures once fds and threads have stopped changing for `settle_s` (loader threads and
    sockets closing take a moment): the steady state to compare."""
    deadline = time.monotonic() + timeout
    last = process_figures(pid)
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = process_figures(pid)
        if (now["fds"], now["threads"]) != (last["fds"], last["threads"]):
            stable_since = time.monotonic()
        last = now
        if time.monotonic() - stable_since >= settle_s:
            break
    return last


def set_nofile(pid: int, soft: int) -> None:
    """Change a running process's soft RLIMIT_NOFILE (prlimit(2)). The hard limit is left as it
    is: raising it again would need CAP_SYS_RESOURCE, which containers often lack."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


# --- inotify limits, for one server only ----------------------------------------------------------
# /proc/sys/fs/inotify/* are per-user limits shared by every process of the machine's root, so
# other tests running at the same time would be hit too. Since Linux 5.11 the same limits exist
# per user namespace (/proc/sys/user/max_inotify_*), checked at every level: a server started in
# a private user namespace whose limit is 0 cannot create (or add) a watch, and nothing else is
# touched. Restoring the limit is done by entering that namespace (nsenter, as root).

INOTIFY_LIMITS = ("max_inotify_instances", "max_inotify_watches")


def userns_available() -> str | None:
    """None when private user namespaces with writable inotify limits work here, else why not."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "unshare or nsenter is not installed"
    try:
        result = subprocess.run(
            [*limited_inotify_prefix("max_inotify_watches"), "cat", "/proc/sys/user/max_inotify_watches"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if result.returncode != 0 or result.stdout.strip() != "0":
        return f"cannot set a per-namespace inotify limit: {result.stderr.strip()[:200]}"
    return None


def limited_inotify_prefix(limit: str, value: int = 0) -> tuple[str, ...]:
    """A command prefix that runs the server in a private user namespace with `limit` set."""
    return (
        "unshare",
        "--user",
        "--map-root-user",
        "--",
        "sh",
        "-c",
        f'echo {value} > /proc/sys/user/{limit} && exec "$@"',
        "sh",
    )


def set_inotify_limit(pid: int, limit: str, value: int) -> None:
    subprocess.run(
        ["nsenter", "--user", f"--target={pid}", "--", "sh", "-c", f"echo {value} > /proc/sys/user/{limit}"],
        check=True,
        timeout=10,
    )
