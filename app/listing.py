"""The list query: parsing and validating its parameters, and the opaque keyset cursor."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

import orjson

from app.errors import BadRequest
from app.index import Key
from app.sessionfile import is_job_id

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


@dataclass(frozen=True, slots=True)
class ListQuery:
    statuses: frozenset[str] | None
    user_id: str | None
    include_saved: bool
    limit: int
    after: Key | None
    pairs: list[tuple[str, str]]  # the query as sent, less the cursor: the next page's base


def encode_cursor(key: Key) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([key[0], key[1]])).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> Key:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = orjson.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("cursor is not valid: pass the cursor of the previous page's Link") from exc
    if (
        isinstance(decoded, list)
        and len(decoded) == 2
        and type(decoded[0]) is int
        and isinstance(decoded[1], str)
        and is_job_id(decoded[1])
    ):
        return decoded[0], decoded[1]
    raise BadRequest("cursor is not valid: pass the cursor of the previous page's Link")


def parse_list_query(query_string: bytes) -> ListQuery:
    try:
        text = query_string.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("the query string must be ASCII (percent-encode other characters)") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=64)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the query string cannot be parsed: {exc}") from exc

    statuses: set[str] | None = None
    user_id: str | None = None
    include_saved = True
    limit = DEFAULT_LIMIT
    after: Key | None = None
    for name, value in pairs:
        if name == "status":
            wanted = {part.strip() for part in value.split(",") if part.strip()}
            if wanted:
                statuses = wanted if statuses is None else statuses | wanted
        elif name == "user_id":
            user_id = value or None
        elif name == "include_saved":
            if value.lower() not in _BOOLEANS:
                raise BadRequest(f"include_saved must be true, false, 1 or 0, not {value[:40]!r}")
            include_saved = _BOOLEANS[value.lower()]
        elif name == "limit":
            if not (value.isascii() and value.isdigit() and len(value) <= 5 and 1 <= int(value) <= MAX_LIMIT):
                raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {value[:40]!r}")
            limit = int(value)
        elif name == "cursor":
            after = decode_cursor(value)
    return ListQuery(
        statuses=frozenset(statuses) if statuses is not None else None,
        user_id=user_id,
        include_saved=include_saved,
        limit=limit,
        after=after,
        pairs=[(name, value) for name, value in pairs if name != "cursor"],
    )


def next_link(path: str, query: ListQuery, last: Key) -> bytes:
    target = urlencode([*query.pairs, ("cursor", encode_cursor(last))])
    return f'<{path}?{target}>; rel="next"'.encode("latin-1")
