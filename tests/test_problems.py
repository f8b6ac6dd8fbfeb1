"""The one table from domain errors to problem details (app/api/problems.py): every error has
its row, and the errors themselves know nothing of HTTP."""

from __future__ import annotations

import inspect

import orjson

from app import errors
from app.api.problems import PROBLEMS, error_body, error_response, problem_of

SERVICE_ERRORS = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.ServiceError) and cls.__module__ == errors.__name__
]


def test_every_domain_error_has_its_own_row() -> None:
    assert len(SERVICE_ERRORS) > 10
    assert sorted(cls.__name__ for cls in SERVICE_ERRORS) == sorted(cls.__name__ for cls in PROBLEMS)


def test_domain_errors_carry_no_http() -> None:
    for cls in SERVICE_ERRORS:
        assert not {"status", "title", "type", "retry_after"} & set(vars(cls)), cls


def test_an_error_becomes_its_rows_problem() -> None:
    body = orjson.loads(error_body(errors.RevisionExpired("list again")))
    assert body == {
        "type": "/problems/revision-expired",
        "title": "Revision expired",
        "status": 410,
        "detail": "list again",
    }
    response = error_response(errors.Warming("soon"), {"Preference-Applied": "wait=0"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1" and response.headers["preference-applied"] == "wait=0"
    assert response.headers["content-type"] == "application/problem+json"
    challenge = error_response(errors.Unauthorized("send a token", 'Bearer realm="sessions"'))
    assert challenge.status_code == 401 and challenge.headers["www-authenticate"] == 'Bearer realm="sessions"'


def test_a_subclass_without_a_row_answers_as_its_base() -> None:
    class Unlisted(errors.SessionNotFound):
        pass

    assert problem_of(Unlisted("x")) == PROBLEMS[errors.SessionNotFound]
    assert problem_of(errors.InvalidRevision("x")).status == 400
