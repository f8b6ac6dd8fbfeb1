"""The service's domain exceptions, turned into problem+json responses in `app.api.problems` alone."""

from __future__ import annotations


class ServiceError(Exception):
    """An error a client should hear about as a problem detail (RFC 9457)."""

    status = 500
    title = "Internal Server Error"
    type = "about:blank"
    retry_after: str | None = None  # seconds, for a Retry-After header

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(ServiceError):
    status = 400
    title = "Bad Request"
    type = "/problems/bad-request"


class InvalidJobId(BadRequest):
    title = "Invalid job id"
    type = "/problems/invalid-job-id"


class SessionNotFound(ServiceError):
    status = 404
    title = "Session not found"
    type = "/problems/session-not-found"


class SessionFileInvalid(SessionNotFound):
    """A file exists for the id but has never held a valid session: 404 with the reason."""

    title = "Session file is invalid"
    type = "/problems/session-file-invalid"


class Unauthorized(ServiceError):
    status = 401
    title = "Unauthorized"
    type = "/problems/unauthorized"


class TemporarilyUnavailable(ServiceError):
    """The session exists but its document cannot be produced right now (e.g. out of file
    descriptors, or its last valid version was evicted while the file is mid-write)."""

    status = 503
    title = "Session temporarily unavailable"
    type = "/problems/temporarily-unavailable"
    retry_after = "1"


class RevisionExpired(ServiceError):
    """A watch from a revision this process no longer holds, or never had (SPEC §6)."""

    status = 410
    title = "Revision expired"
    type = "/problems/revision-expired"


class TooManyStreams(ServiceError):
    status = 503
    title = "Too many streams"
    type = "/problems/too-many-streams"
    retry_after = "1"


class Warming(ServiceError):
    """The warm-up is not done: an answer now could be a 404 for a session not loaded yet."""

    status = 503
    title = "Warming up"
    type = "/problems/warming-up"
    retry_after = "1"


class NotServingStreams(ServiceError):
    """Warming up or shutting down: a watch would be cut short or miss what the warm-up loads."""

    status = 503
    title = "Not serving streams now"
    type = "/problems/not-serving-streams"
    retry_after = "1"


class InvalidSessionFile(Exception):
    """A session file that must not be served; `reason` says why, for logs and 404 details."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientReadError(Exception):
    """Reading failed for a reason that says nothing about the file (EMFILE, ENOMEM, EINTR...):
    keep what is known and try again later rather than declare the file invalid."""
