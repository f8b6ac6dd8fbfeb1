"""Code that calls a client generated from the service's /openapi.json by openapi-python-client,
as a caller would write it. tests/test_generated_client.py copies it beside the generated
package `sessions_api`, type-checks it with `mypy --strict` and runs it against a real server.
It is not imported from the repository: `sessions_api` exists only in that test's temporary folder."""

from __future__ import annotations

from typing import NamedTuple

import httpx
from sessions_api import Client
from sessions_api.api.default import get_job, list_jobs
from sessions_api.models import GetJobResponse200, Problem, Summary
from sessions_api.types import UNSET


class Fetched(NamedTuple):
    status: int
    etag: str | None
    document: dict[str, object] | None
    problem_type: str | None
    preference_applied: str | None


def client(base_url: str) -> Client:
    # A plain Client: without a token the document declares no security.
    return Client(base_url=base_url, timeout=httpx.Timeout(30.0), raise_on_unexpected_status=True)


def unfinished_ids(api: Client, statuses: list[str] | None = None) -> list[str]:
    response = list_jobs.sync_detailed(client=api, include_saved=False, status=statuses if statuses else UNSET)
    assert response.status_code == 200, response.content
    page = response.parsed
    assert isinstance(page, list)
    ids: list[str] = []
    for summary in page:
        assert isinstance(summary, Summary)
        ids.append(summary.job_id)
    return ids


def all_ids(api: Client, limit: int) -> tuple[list[str], int, str | None]:
    """One page: its ids, X-Total-Count, and the next page's Link."""
    response = list_jobs.sync_detailed(client=api, limit=limit)
    assert response.status_code == 200, response.content
    page = response.parsed
    assert isinstance(page, list)
    return [summary.job_id for summary in page], int(response.headers["X-Total-Count"]), response.headers.get("Link")


def fetch(api: Client, job_id: str, if_none_match: str | None = None, wait_s: int | None = None) -> Fetched:
    response = get_job.sync_detailed(
        job_id,
        client=api,
        if_none_match=if_none_match if if_none_match is not None else UNSET,
        prefer=f"wait={wait_s}" if wait_s is not None else UNSET,
    )
    parsed = response.parsed
    document: dict[str, object] | None = None
    problem_type: str | None = None
    if isinstance(parsed, GetJobResponse200):
        document = parsed.to_dict()
    elif isinstance(parsed, Problem):
        problem_type = parsed.type_
    return Fetched(
        int(response.status_code),
        response.headers.get("ETag"),
        document,
        problem_type,
        response.headers.get("Preference-Applied"),
    )
