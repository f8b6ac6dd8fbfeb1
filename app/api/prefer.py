"""The `Prefer` request header (RFC 7240), for its one preference the service honours: `wait`."""

from __future__ import annotations

from app.errors import BadRequest

_MAX_DIGITS = 12  # past this, any value is capped by SESSIONS_MAX_WAIT_S anyway


def requested_wait(prefer: bytes) -> int | None:
    """The seconds `Prefer: wait=N` asks for; None when it asks nothing of the kind. Other
    preferences are ignored, as RFC 7240 wants; a `wait` that is not a whole number of seconds
    is a 400."""
    for preference in prefer.split(b","):
        token, _, _parameters = preference.partition(b";")
        name, equals, value = token.partition(b"=")
        if name.strip().lower() != b"wait":
            continue
        value = value.strip()
        if len(value) >= 2 and value.startswith(b'"') and value.endswith(b'"'):
            value = value[1:-1]
        if not equals or not value.isdigit() or not value.isascii():
            shown = preference.strip()[:40].decode("latin-1")
            raise BadRequest(f"Prefer: {shown!r}: wait must be a whole number of seconds, as in 'wait=30'")
        return int(value[:_MAX_DIGITS]) if len(value) <= _MAX_DIGITS else 10**_MAX_DIGITS
    return None


def applied(seconds: float) -> bytes:
    """A `Preference-Applied` value: wait=N, N as applied."""
    return b"wait=%d" % seconds if seconds == int(seconds) else b"wait=%s" % repr(seconds).encode()
