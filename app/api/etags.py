"""ETags as HTTP compares them for If-None-Match (RFC 9110 §13.1.2: the weak comparison):
quotes and a `W/` prefix do not matter."""

from __future__ import annotations


def etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    """Whether an If-None-Match (or Last-Event-ID) value names `etag` (a quoted strong tag)."""
    if if_none_match == etag:
        return True
    for candidate in if_none_match.split(b","):
        candidate = candidate.strip()
        if candidate == b"*" or normalize(candidate) == etag:
            return True
    return False


def normalize(value: bytes) -> bytes:
    """The quoted strong form of one ETag as a client may send it back (W/, quotes or not)."""
    value = value.strip().removeprefix(b"W/")
    if not (len(value) >= 2 and value.startswith(b'"') and value.endswith(b'"')):
        value = b'"' + value.strip(b'"') + b'"'
    return value
