"""How long to wait before trying again: exponential backoff with full jitter.

Full jitter (a delay drawn uniformly between 0 and the exponential bound) spreads the clients
that lost the same replica at the same instant over the whole interval, where "equal jitter"
or a fixed delay would send them back together (the AWS architecture blog's "Exponential
Backoff And Jitter" measures the three)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry `n` (1, 2, ...) waits uniform(0, min(maximum, initial * 2**(n-1))) seconds; a
    Retry-After from the server is waited in full, plus that jitter, at most `maximum` more."""

    initial: float = 0.25
    maximum: float = 30.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum):
            raise ValueError("Backoff needs 0 < initial <= maximum")

    def bound(self, attempt: int) -> float:
        if attempt <= 0:
            return 0.0
        # min() before the power would overflow: 2**1100 is a float overflow.
        return min(self.maximum, self.initial * 2.0 ** min(attempt - 1, 64))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        jitter = self.rng.uniform(0.0, self.bound(attempt))
        if retry_after is None:
            return jitter
        return min(retry_after, 3600.0) + jitter


# Statuses a read (get, a list page) is tried again after: a replica warming up or draining, a
# proxy with no replica to send to or none that answered in time. Not 500: a bug stays a bug.
READ_RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Retries of one read after the first attempt: a replica that went away mid-request is behind
# a load balancer that routes the retry elsewhere; more would only hide an outage.
DEFAULT_RETRIES = 2


def read_retry_delay(
    backoff: Backoff, attempt: int, retries: int, retry_after: float | None, cap: float
) -> float | None:
    """The pause before retry `attempt` (1, 2, ...) of an idempotent read that failed (a
    transport error, or a status of READ_RETRY_STATUSES with its Retry-After), at most `cap`
    seconds; None once `retries` are spent: the caller then sees the failure."""
    if attempt > retries:
        return None
    return min(cap, backoff.delay(attempt, retry_after))


class ReadRetries:
    """The tries of one idempotent read (get, a list page), for the sync and async clients' one
    loop: after each failed try, the pause before the next, or None to give up."""

    def __init__(self, backoff: Backoff, retries: int, cap: float) -> None:
        self.backoff, self.retries, self.cap = backoff, retries, cap
        self.failed = 0

    def after_error(self) -> float | None:
        """A transport error: the pause, or None to raise it."""
        self.failed += 1
        return read_retry_delay(self.backoff, self.failed, self.retries, None, self.cap)

    def after_response(self, status: int, retry_after: float | None) -> float | None:
        """An answer: the pause before trying again, or None to return it (a success, an error
        no retry helps, or the retries spent)."""
        if status not in READ_RETRY_STATUSES:
            return None
        self.failed += 1
        return read_retry_delay(self.backoff, self.failed, self.retries, retry_after, self.cap)
