"""The service's domain errors. They say what went wrong, never how HTTP answers it: the one
table in `app.api.problems` maps each to its problem details (status, title, type). Every layer
raises them, so they import nothing of the service."""

from __future__ import annotations


class ServiceError(Exception):
    """An error a client should hear about; `detail` says what it can do about it."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(ServiceError):
    """The request cannot be answered as written: a malformed parameter or header."""


class InvalidJobId(BadRequest):
    pass


class InvalidRevision(BadRequest):
    """A token that cannot be a revision at all (one that could be is Expired or a position)."""


class OriginNotAllowed(ServiceError):
    """A browser's preflight from an origin the service does not serve."""


class SessionNotFound(ServiceError):
    pass


class SessionFileInvalid(SessionNotFound):
    """A file exists for the id but has never held a valid session."""


class Unauthorized(ServiceError):
    """No credentials, or not the right ones."""

    def __init__(self, detail: str, challenge: str) -> None:
        super().__init__(detail)
        self.challenge = challenge  # what the caller should send instead (WWW-Authenticate)


class TemporarilyUnavailable(ServiceError):
    """The session exists but its document cannot be produced right now (e.g. out of file
    descriptors, or its last valid version was evicted while the file is mid-write)."""


class RevisionExpired(ServiceError):
    """A watch from a revision this process no longer holds, or never had (docs/contract.md)."""


class StreamFellBehind(ServiceError):
    """A stream's client read more slowly than changes came, beyond what its buffer holds."""


class TooManyStreams(ServiceError):
    pass


class Warming(ServiceError):
    """The warm-up is not done: an answer now could be a 404 for a session not loaded yet."""


class NotServingStreams(ServiceError):
    """Warming up or shutting down: a watch would be cut short or miss what the warm-up loads."""


class HeadTooLarge(ServiceError):
    """A request line and headers longer than the server reads."""


class InvalidSessionFile(Exception):
    """A session file that must not be served; `reason` says why, for logs and 404 details."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientReadError(Exception):
    """Reading failed for a reason that says nothing about the file (EMFILE, ENOMEM, EINTR...):
    keep what is known and try again later rather than declare the file invalid."""
