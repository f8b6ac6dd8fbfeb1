"""Start-up, readiness, shutdown (docs/contract.md#what-it-is, #probes, #promises) and the single-flight loader."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.store import sessionfile
from app.store.loader import MissLoader
from app.store.store import SessionStore
from tests.support import Server, encode, put_session, session_doc, wait_until


def test_port_opens_at_once_and_ready_only_when_warm(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    count = 20_000
    for n in range(count):
        (sessions_dir / f"job-{n:05d}.json").write_bytes(encode(session_doc(f"job-{n:05d}", n=n)))
    server = serve(sessions_dir, wait_ready=False)  # returns as soon as /livez answers
    seen: list[tuple[int, dict[str, object]]] = []
    api: list[tuple[int, dict[str, object]]] = []

    def ready() -> bool:
        response = server.get("/readyz")
        seen.append((response.status_code, response.json()))
        assert server.get("/livez").status_code == 200
        if response.status_code != 200:  # the API meanwhile: never a 404 for a session not loaded yet
            job = server.get("/api/v2/jobs/job-19999")
            api.append((job.status_code, job.json()))
        return response.status_code == 200

    wait_until(ready, 60, what="the warm-up")
    assert seen[0] == (503, {"status": "warming"}), seen[:3]
    assert all(body == {"status": "warming"} for status, body in seen if status == 503)
    assert api and all(status in (503, 200) for status, _ in api), api[:3]
    assert all(body["type"] == "/problems/warming-up" for status, body in api if status == 503)
    assert seen[-1][1]["sessions"] == count
    assert server.get("/api/v2/jobs").headers["x-total-count"] == str(count)


def test_sigterm_turns_readiness_off_keeps_serving_then_exits_0(
    sessions_dir: Path, serve: Callable[..., Server]
) -> None:
    put_session(sessions_dir, "j")
    delay = 6.0  # long enough that a loaded machine answers the checks below well within it
    server = serve(sessions_dir, env={"SESSIONS_SHUTDOWN_DELAY_S": str(delay)})
    client = httpx.Client(base_url=server.base_url, timeout=5)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    # "at once": within the first half of the delay, however loaded the machine
    wait_until(lambda: client.get("/readyz").status_code == 503, delay / 2, what="readiness off at once")
    assert client.get("/readyz").json() == {"status": "draining"}
    assert client.get("/api/v2/jobs/j").status_code == 200  # still serving during the delay
    assert client.get("/livez").status_code == 200
    assert time.monotonic() - started < delay  # those were answered during the delay, not after it
    client.close()
    assert server.process.wait(30) == 0
    assert time.monotonic() - started >= delay
    messages = [entry["message"] for entry in server.json_logs()]
    assert "stopped" in messages  # the lifespan shutdown ran: watcher and threads stopped


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_without_delay_exits_0_promptly(
    sessions_dir: Path, serve: Callable[..., Server], sig: signal.Signals
) -> None:
    server = serve(sessions_dir)
    started = time.monotonic()
    assert server.stop(sig) == 0
    assert time.monotonic() - started < 10


def test_second_signal_skips_the_delay(sessions_dir: Path, serve: Callable[..., Server]) -> None:
    server = serve(sessions_dir, env={"SESSIONS_SHUTDOWN_DELAY_S": "60"})
    server.process.send_signal(signal.SIGTERM)
    wait_until(lambda: server.get("/readyz").status_code == 503, 5)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(20) == 0


def test_a_miss_is_loaded_once_however_many_wait(tmp_path: Path) -> None:
    data = encode(session_doc("big", payload="x" * 100_000))
    (tmp_path / "big.json").write_bytes(data)
    store = SessionStore(tmp_path, cache_max_entries=0, cache_max_bytes=0, max_file_bytes=10_000_000)
    store.apply_loaded(sessionfile.read(tmp_path, "big", store.max_file_bytes))
    reads: list[str] = []
    original = store.load_missing

    def counted(job_id: str) -> sessionfile.Document:
        reads.append(job_id)
        return original(job_id)

    store.load_missing = counted  # type: ignore[method-assign]
    gate = threading.Event()
    with ThreadPoolExecutor(1) as executor:
        executor.submit(gate.wait, 10)  # the only loader thread is busy: the loads queue up

        async def scenario() -> list[bytes]:
            loader = MissLoader(store, executor)
            waiters = [asyncio.ensure_future(loader.load("big")) for _ in range(50)]
            await asyncio.sleep(0)  # let every waiter reach the loader before the gate opens
            gate.set()
            documents = await asyncio.gather(*waiters)
            assert loader.loads == 1
            return [document.body for document in documents]

        bodies = asyncio.run(scenario())
    assert bodies == [data] * 50
    assert reads == ["big"]
