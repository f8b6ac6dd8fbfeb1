"""Torn writes are never served: a writer rewrites a large session in place, in chunks, while
readers hammer it; every body served is one complete version, with the ETag of those bytes.

Run with the cache (the reconciler loads each version; a mid-write state is invalid and the
last version is served stale) and without it (every GET reads the file itself, so the reader
meets the half-written file directly and must retry or answer 503, never serve it)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support import Server, encode, session_doc, wait_until, write_in_chunks

pytestmark = pytest.mark.slow  # large files rewritten in place for seconds

READERS = 4
VERSIONS = 10


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="cached"),
        pytest.param({"SESSIONS_CACHE_MAX_ENTRIES": "0"}, id="uncached, every GET reads the file"),
    ],
)
def test_a_large_session_rewritten_in_place_is_never_served_torn(
    sessions_dir: Path, serve: Callable[..., Server], env: dict[str, str]
) -> None:
    # ~1.2 MB pretty-printed, with a list of records: a prefix is never a valid JSON object.
    versions = [
        encode(session_doc("big", version=v, records=[{"n": n, "v": v, "text": "t" * 100} for n in range(10_000)]))
        for v in range(VERSIONS)
    ]
    etags = {f'"{hashlib.sha256(data).hexdigest()[:32]}"': index for index, data in enumerate(versions)}
    path = sessions_dir / "big.json"
    path.write_bytes(versions[0])
    server = serve(sessions_dir, env={**env, "SESSIONS_LOG_LEVEL": "warning"})
    outcomes: Counter[str] = Counter()
    seen: set[int] = set()
    torn: list[str] = []
    done = threading.Event()
    deadline = time.monotonic() + 90

    def reader() -> None:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            for _ in range(50_000):
                if done.is_set() or time.monotonic() > deadline:
                    return
                response = client.get("/api/v2/jobs/big")
                if response.status_code == 503 and response.headers.get("retry-after"):
                    outcomes["503"] += 1
                    continue
                if response.status_code != 200:
                    torn.append(f"status {response.status_code}: {response.text[:200]}")
                    continue
                body = response.content
                if body not in versions:
                    torn.append(f"a body of {len(body)} bytes that is no version, ending {body[-40:]!r}")
                    continue
                index = versions.index(body)
                if etags.get(response.headers["etag"]) != index:
                    torn.append(f"version {index} served with the ETag of another: {response.headers['etag']}")
                seen.add(index)
                outcomes["stale" if response.headers.get("x-session-stale") == "true" else "fresh"] += 1

    readers = [threading.Thread(target=reader, name=f"reader-{n}") for n in range(READERS)]
    for thread in readers:
        thread.start()
    try:
        for data in versions[1:]:
            # 40 pieces, synced to disk one by one, with pauses: readers meet the file half-written
            write_in_chunks(path, data, chunks=40, pause=0.002)
            wait_until(lambda data=data: server.get("/api/v2/jobs/big").content == data, 10, what="the new version")
    finally:
        done.set()
        for thread in readers:
            thread.join(30)
    assert not any(thread.is_alive() for thread in readers)
    assert not torn, torn[:5]
    # the readers really were reading throughout (a count, not a rate: a loaded machine reads
    # 1.2 MB bodies slowly), and saw the versions go by
    assert sum(outcomes.values()) >= 2 * VERSIONS, outcomes
    assert len(seen) >= VERSIONS // 2, (sorted(seen), outcomes)
    if not env:
        assert outcomes["503"] == 0, outcomes  # with the cache, the last version is served instead
    assert server.get("/livez").status_code == 200
