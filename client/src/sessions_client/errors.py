"""What can go wrong, as exceptions: one class per problem the service answers (RFC 9457
problem details, read from the response in `problem_from` alone), the transport, and the
outcomes of `wait`."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sessions_client.models import Session


class SessionsError(Exception):
    """Everything this library raises (besides ValueError for a bad argument)."""


class TransportError(SessionsError):
    """No answer: the connection was refused, reset or timed out. Safe to retry a read."""


class ProtocolError(SessionsError):
    """An answer this library cannot read: not JSON, an event without a type, a line too long."""


class ProblemError(SessionsError):
    """The service answered with a problem detail (or a proxy with a bare error status)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        type: str = "about:blank",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}" if detail else f"{status} {title}")
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.retry_after = retry_after  # seconds, from Retry-After


class BadRequest(ProblemError):
    """400: a parameter the service refuses (the detail says which)."""


class Unauthorized(ProblemError):
    """401: no token, or the wrong one."""


class NotFound(ProblemError):
    """404: no such session (or a file that has never been valid: the detail says why)."""


class SessionDeleted(NotFound):
    """`wait`: the session was deleted while the caller waited for it."""


class Gone(ProblemError):
    """410: a revision this replica does not hold (another replica's, from before a restart, or
    too old). Watches handle it themselves, by listing again."""


class Unavailable(ProblemError):
    """503 (or 429): warming up, draining, too many streams, or a session unreadable right now;
    `retry_after` says when to try again. Watches and waits retry by themselves."""


class ServerError(ProblemError):
    """Any other 5xx, the service's or a proxy's."""


class WaitTimeout(SessionsError, TimeoutError):
    """`wait`: the deadline passed first. `session` is the last version seen."""

    def __init__(self, message: str, session: Session | None) -> None:
        super().__init__(message)
        self.session = session


_CLASSES: dict[int, type[ProblemError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    410: Gone,
    429: Unavailable,
    503: Unavailable,
}


def problem_class(status: int) -> type[ProblemError]:
    return _CLASSES.get(status) or (ServerError if status >= 500 else ProblemError)


def problem_from(status: int, headers: Mapping[str, str], body: bytes) -> ProblemError:
    """The exception for an error response: its problem detail when the body is one, else what
    the status says (a load balancer's own error page is not a problem detail)."""
    title, detail, type_ = _phrase(status), "", "about:blank"
    try:
        problem = json.loads(body) if body else None
    except ValueError:
        problem = None
    if isinstance(problem, dict):
        title = str(problem.get("title") or title)
        detail = str(problem.get("detail") or "")
        type_ = str(problem.get("type") or type_)
    return problem_class(status)(status, title, detail, type_, retry_after(headers))


def problem_from_object(problem: object) -> ProblemError:
    """The exception for the problem detail of an ERROR event."""
    fields = problem if isinstance(problem, dict) else {}
    status = fields.get("status")
    status = status if isinstance(status, int) else 500
    return problem_class(status)(
        status,
        str(fields.get("title") or _phrase(status)),
        str(fields.get("detail") or ""),
        str(fields.get("type") or "about:blank"),
    )


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
