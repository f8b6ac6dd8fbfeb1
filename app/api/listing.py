"""The list query: parsing and validating its parameters, and the opaque keyset cursor."""

from __future__ import annotations

import base64
import binascii
from typing import NamedTuple
from urllib.parse import quote, unquote_plus

import orjson

from app.errors import BadRequest
from app.store.index import AFTER, Key, SessionFilter
from app.store.sessionfile import is_job_id

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_PARAMETERS = 64
MAX_STATUSES = 64
MAX_VALUE_LENGTH = 1024
# What a query may hold as is inside Link: <...>; anything else (<, >, ", spaces) is escaped.
_SAFE_IN_LINK = "&=%+,-._~:/!$'()*;@"
# The spellings FastAPI (pydantic) accepts, which the job API's callers send; any case.
_BOOLEANS = {
    **dict.fromkeys(("true", "1", "yes", "on", "t", "y"), True),
    **dict.fromkeys(("false", "0", "no", "off", "f", "n"), False),
}


class ListQuery(NamedTuple):
    statuses: frozenset[str] | None
    user_id: str | None
    include_saved: bool
    limit: int
    after: Key | None
    base: str  # the query as sent, less the cursor
    watch: bool = False
    revision: str | None = None  # watch from here (docs/contract.md#revisions)

    def filter(self, finished: frozenset[str]) -> SessionFilter:
        """The query's filters, where `finished` is what include_saved=false leaves out."""
        return SessionFilter(self.statuses, self.user_id, self.include_saved, finished)


def parse_boolean(name: str, value: str) -> bool:
    try:
        return _BOOLEANS[value.lower()]
    except KeyError:
        raise BadRequest(
            f"{name} must be a boolean (true, false, 1, 0, yes, no, on, off, t, f, y or n, in any case), "
            f"not {value[:40]!r}"
        ) from None


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
        return decoded[0], decoded[1], AFTER
    raise BadRequest("cursor is not valid: pass the cursor of the previous page's Link")


def parse_list_query(query_string: bytes) -> ListQuery:
    try:
        text = query_string.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("the query string must be ASCII (percent-encode other characters)") from None
    parts = [part for part in text.split("&") if part]
    if len(parts) > MAX_PARAMETERS:
        raise BadRequest(f"too many query parameters (at most {MAX_PARAMETERS})")
    pairs = [_parameter(part) for part in parts]

    statuses: set[str] | None = None
    user_id: str | None = None
    include_saved = True
    limit = DEFAULT_LIMIT
    after: Key | None = None
    paged = False  # limit or cursor given
    watch = False
    revision: str | None = None
    for name, value in pairs:
        if len(value) > MAX_VALUE_LENGTH:
            raise BadRequest(f"{name[:40]!r} is longer than {MAX_VALUE_LENGTH} characters")
        if name == "status":
            wanted = {part.strip() for part in value.split(",") if part.strip()}
            if wanted:
                statuses = wanted if statuses is None else statuses | wanted
                if len(statuses) > MAX_STATUSES:
                    raise BadRequest(f"at most {MAX_STATUSES} statuses")
        elif name == "user_id":
            if not value:
                # Not "no filter": a client that forgot to fill it in would get everyone's.
                raise BadRequest("user_id must not be empty (leave it out to list every user's)")
            user_id = value
        elif name == "include_saved":
            include_saved = parse_boolean(name, value)
        elif name == "limit":
            if not (value.isascii() and value.isdigit() and len(value) <= 5 and 1 <= int(value) <= MAX_LIMIT):
                raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {value[:40]!r}")
            limit = int(value)
            paged = True
        elif name == "cursor":
            after = decode_cursor(value)
            paged = True
        elif name == "watch":
            watch = parse_boolean(name, value)
        elif name == "revision":
            revision = value
    if watch and paged:
        raise BadRequest("watch=true cannot be paged: leave out limit and cursor (a watch sends every session)")
    if revision is not None and not watch:
        raise BadRequest("revision= is for watches: add watch=true, or leave it out")
    return ListQuery(
        frozenset(statuses) if statuses is not None else None,
        user_id,
        include_saved,
        limit,
        after,
        # The next page's query: this one as sent, less its cursor (no re-encoding needed).
        quote(
            "&".join(part for part, (name, _) in zip(parts, pairs, strict=True) if name != "cursor"),
            safe=_SAFE_IN_LINK,
        ),
        watch,
        revision,
    )


def parse_job_query(query_string: bytes) -> bool:
    """Whether a job's query asks for its watch. Other parameters are ignored, as they always
    were for a job; `revision=` is refused, as a job watch resumes by ETag."""
    try:
        text = query_string.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("the query string must be ASCII (percent-encode other characters)") from None
    watch = False
    parts = [part for part in text.split("&") if part]
    if len(parts) > MAX_PARAMETERS:
        raise BadRequest(f"too many query parameters (at most {MAX_PARAMETERS})")
    for name, value in map(_parameter, parts):
        if name == "watch":
            watch = parse_boolean(name, value)
        elif name == "revision":
            raise BadRequest(
                "a job watch resumes by ETag (Last-Event-ID or If-None-Match), not by revision: leave out revision="
            )
    return watch


def _parameter(part: str) -> tuple[str, str]:
    name, _, value = part.partition("=")
    if "%" in part or "+" in part:
        try:
            return unquote_plus(name, errors="strict"), unquote_plus(value, errors="strict")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"the query string has percent-encoded bytes that are not UTF-8: {exc.reason}") from exc
    return name, value


def next_link(path: str, query: ListQuery, last: Key) -> bytes:
    target = f"{query.base}&cursor={encode_cursor(last)}" if query.base else f"cursor={encode_cursor(last)}"
    return f'<{path}?{target}>; rel="next"'.encode("ascii")
