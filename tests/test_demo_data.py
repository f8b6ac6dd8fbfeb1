"""The demo sessions in data/sessions/ (what `make run` serves) are valid session files per the
contract (docs/contract.md#files) and look like what the job system writes. Standard library and orjson only."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support import STATUSES as SEEN_IN_THE_WILD

DATA = Path(__file__).resolve().parent.parent / "data" / "sessions"
FILES = sorted(DATA.glob("*.json"))

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
STATUSES = set(SEEN_IN_THE_WILD)
WAITING_FOR_A_HUMAN = {"pending_hitl", "pending_user_input", "pending_review"}
MAX_FILE_BYTES = 8_388_608  # SESSIONS_MAX_FILE_BYTES default
DEMO_MAX_BYTES = 3 * 1024


def instant(value: Any) -> datetime:
    assert isinstance(value, str) and RFC3339.match(value), f"not an RFC 3339 timestamp: {value!r}"
    parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))  # also checks the ranges
    assert parsed.tzinfo is not None
    return parsed


def load(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf"), "no byte-order mark"
    raw.decode("utf-8")  # strict: raises on anything that is not UTF-8
    document = orjson.loads(raw)
    assert isinstance(document, dict), "a session is a JSON object"
    return document


def test_the_folder_holds_only_session_files() -> None:
    assert 6 <= len(FILES) <= 8
    assert sorted(DATA.iterdir()) == FILES, "nothing else in the folder"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_demo_file_is_a_valid_session(path: Path) -> None:
    assert path.is_file() and not path.is_symlink()
    assert JOB_ID.match(path.stem)
    assert uuid.UUID(path.stem).version == 4 and str(uuid.UUID(path.stem)) == path.stem, "named by UUID4"
    size = path.stat().st_size
    assert size <= MAX_FILE_BYTES and size <= DEMO_MAX_BYTES

    document = load(path)
    assert document["job_id"] == path.stem
    assert document["status"] in STATUSES
    assert isinstance(document["user_id"], str) and document["user_id"]
    assert instant(document["created_at"]) <= instant(document["updated_at"])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_demo_file_is_pretty_printed_like_the_writer(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_demo_file_carries_what_its_status_implies(path: Path) -> None:
    document = load(path)
    status = document["status"]
    assert isinstance(document.get("job_type"), str)
    assert isinstance(document.get("input"), dict)
    assert isinstance(document.get("progress"), dict)
    if status in WAITING_FOR_A_HUMAN:
        hitl = document["hitl"]
        assert isinstance(hitl["question"], str) and hitl["question"]
        assert isinstance(hitl["options"], list) and hitl["options"]
        instant(hitl["requested_at"])
    if status == "failed":
        assert isinstance(document["error"], dict) and document["error"]["message"]
    if status == "completed":
        assert isinstance(document["result"], dict)


def test_the_demo_covers_every_status_users_and_offsets() -> None:
    documents = [load(path) for path in FILES]
    assert {d["status"] for d in documents} == STATUSES
    assert len({d["user_id"] for d in documents}) >= 2
    stamps = [d[key] for d in documents for key in ("created_at", "updated_at")]
    assert any(s.endswith("Z") for s in stamps)
    assert any(re.search(r"[+-]\d{2}:\d{2}$", s) and not s.endswith(("+00:00", "-00:00")) for s in stamps)
