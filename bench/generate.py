"""Deterministic, realistic job-session documents (~2 KB pretty-printed, UUID names)."""

from __future__ import annotations

import os
import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

STATUSES = (
    ("pending", 8),
    ("running", 12),
    ("pending_hitl", 4),
    ("pending_user_input", 4),
    ("pending_review", 4),
    ("completed", 50),
    ("failed", 12),
    ("cancelled", 6),
)
USERS = tuple(f"user-{i:03d}" for i in range(48))
OFFSETS = (UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30)))
MODELS = ("gpt-4o", "claude-3-5-sonnet", "llama-3.1-70b", "mistral-large", "gemini-1.5-pro")
STEP_NAMES = ("fetch_inputs", "plan", "retrieve_context", "draft", "review", "tool_call", "summarize", "publish")
WORDS = (
    "quarterly report customer churn pipeline invoice reconcile dataset schema migration audit "
    "forecast inventory ticket triage summary contract renewal anomaly cluster export backlog"
).split()
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
FINISHED = {"completed", "failed", "cancelled"}


def _rfc3339(moment: datetime, rng: random.Random) -> str:
    local = moment.astimezone(rng.choice(OFFSETS))
    text = local.isoformat(timespec="milliseconds" if rng.random() < 0.5 else "seconds")
    return text.replace("+00:00", "Z")


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def make_document(rng: random.Random, job_id: str) -> dict[str, Any]:
    statuses, weights = zip(*STATUSES, strict=True)
    status = rng.choices(statuses, weights)[0]
    created = EPOCH + timedelta(seconds=rng.randrange(600 * 86400))
    updated = created + timedelta(seconds=rng.randrange(1, 3 * 86400))
    steps = []
    moment = created
    for name in rng.sample(STEP_NAMES, rng.randint(3, 6)):
        took = rng.randrange(200, 120_000)
        steps.append(
            {
                "name": name,
                "status": "completed" if status in FINISHED or rng.random() < 0.5 else "running",
                "started_at": _rfc3339(moment, rng),
                "duration_ms": took,
                "attempt": rng.randint(1, 3),
            }
        )
        moment += timedelta(milliseconds=took)
    return {
        "job_id": job_id,
        "status": status,
        "user_id": rng.choice(USERS),
        "created_at": _rfc3339(created, rng),
        "updated_at": _rfc3339(updated, rng),
        "title": _sentence(rng, rng.randint(3, 7)),
        "description": _sentence(rng, rng.randint(12, 30)),
        "priority": rng.choice(("low", "normal", "high")),
        "tags": rng.sample(WORDS, rng.randint(1, 4)),
        "model": {"name": rng.choice(MODELS), "temperature": round(rng.random(), 2), "max_tokens": 4096},
        "inputs": {"source": f"s3://jobs-input/{job_id[:8]}/data.parquet", "rows": rng.randrange(10**6)},
        "steps": steps,
        "usage": {
            "prompt_tokens": rng.randrange(10**5),
            "completion_tokens": rng.randrange(10**4),
            "cost_usd": round(rng.random() * 3, 4),
        },
        "result": None
        if status not in FINISHED
        else {"summary": _sentence(rng, rng.randint(8, 20)), "artifacts": rng.randint(0, 5)},
        "metadata": {
            "trace_id": f"{rng.getrandbits(128):032x}",
            "region": rng.choice(("eu-west-1", "us-east-1", "ap-south-1")),
            "queue": rng.choice(("default", "batch", "interactive")),
            "client": {"name": "jobs-cli", "version": f"2.{rng.randint(0, 9)}.{rng.randint(0, 30)}"},
        },
        "error": {"code": "E_TIMEOUT", "message": _sentence(rng, 8)} if status == "failed" else None,
    }


def render(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def job_ids(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


def generate(folder: Path, count: int, seed: int = 20240601) -> list[str]:
    """Write `count` sessions into `folder`; the same seed always writes the same files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed ^ 0x5EED)
    ids = job_ids(count, seed)
    for job_id in ids:
        (folder / f"{job_id}.json").write_bytes(render(make_document(rng, job_id)))
    return ids


def link_subset(source: Path, target: Path, ids: list[str]) -> None:
    """A folder holding hard links to some of `source`'s files (read-only use)."""
    target.mkdir(parents=True, exist_ok=True)
    for job_id in ids:
        os.link(source / f"{job_id}.json", target / f"{job_id}.json")


def mean_file_bytes(folder: Path) -> float:
    sizes = [entry.stat().st_size for entry in os.scandir(folder)]
    return sum(sizes) / len(sizes) if sizes else 0.0
