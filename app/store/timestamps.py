"""RFC 3339 timestamps as integer nanoseconds since the epoch, offsets honoured."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,32}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,  # RFC 3339 digits are ASCII: without it \d matches "２０２４" too
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_SECOND = timedelta(seconds=1)
_NS = 1_000_000_000


def instant_ns(value: object) -> int | None:
    """The instant a RFC 3339 string names, in ns since the epoch; None for anything else.

    Integer nanoseconds keep distinct sub-microsecond instants distinct, which floats would not,
    and compare correctly across offsets ("10:00+02:00" is before "09:00Z").
    """
    if not isinstance(value, str):
        return None
    match = _RFC3339.fullmatch(value)
    if match is None:
        return None
    try:
        # The common shapes: parsed in C, to the microsecond.
        moment = datetime.fromisoformat(value)
    except ValueError:
        return _slow_instant_ns(match)
    fraction = match.group(7) or ""
    return ((moment - _EPOCH) // _MICROSECOND) * 1000 + int(fraction[6:9].ljust(3, "0"))


def _slow_instant_ns(match: re.Match[str]) -> int | None:
    """Shapes fromisoformat refuses: a leap second, a lower-case "z" after a space..."""
    year, month, day, hour, minute, second = (int(part) for part in match.group(1, 2, 3, 4, 5, 6))
    leap = 0
    if second == 60:  # a leap second: the instant one second after :59
        second, leap = 59, 1
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None
    seconds = (moment - _EPOCH) // _SECOND + leap
    if match.group(9) is not None:
        offset_hours, offset_minutes = int(match.group(10)), int(match.group(11))
        if offset_hours > 23 or offset_minutes > 59:
            return None
        offset = offset_hours * 3600 + offset_minutes * 60
        seconds -= offset if match.group(9) == "+" else -offset
    fraction = match.group(7) or ""
    return seconds * _NS + int((fraction + "000000000")[:9])
