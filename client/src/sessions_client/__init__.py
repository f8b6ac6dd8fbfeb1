"""A Python client of the job-session service (its README: "Calling it from Python").

Sync: SessionsClient, Mirror (a thread), Stop. Async: AsyncSessionsClient, AsyncMirror (a task).
Both: get with an ETag cache, list across pages, wait on the long poll, watch and watch_job
with resume, relist and backoff."""

from sessions_client._async.client import AsyncSessionsClient
from sessions_client._async.mirror import AsyncMirror
from sessions_client._sync.client import SessionsClient
from sessions_client._sync.mirror import Mirror
from sessions_client.backoff import Backoff
from sessions_client.concurrency import Stop
from sessions_client.errors import (
    BadRequest,
    Gone,
    NotFound,
    ProblemError,
    ProtocolError,
    ServerError,
    SessionDeleted,
    SessionsError,
    TransportError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from sessions_client.models import (
    FINISHED_STATUSES,
    EventType,
    Filter,
    JobEvent,
    Page,
    Session,
    SessionList,
    Summary,
    WatchEvent,
)
from sessions_client.writer import SessionWriter

__all__ = [
    "FINISHED_STATUSES",
    "AsyncMirror",
    "AsyncSessionsClient",
    "Backoff",
    "BadRequest",
    "EventType",
    "Filter",
    "Gone",
    "JobEvent",
    "Mirror",
    "NotFound",
    "Page",
    "ProblemError",
    "ProtocolError",
    "ServerError",
    "Session",
    "SessionDeleted",
    "SessionList",
    "SessionWriter",
    "SessionsClient",
    "SessionsError",
    "Stop",
    "Summary",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "WatchEvent",
]
