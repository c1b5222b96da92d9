"""One error shape for every route, and the mapping from domain errors to HTTP."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from fivesafes_tes.auth import JwksUnavailable
from fivesafes_tes.crates.bagit import BagRefused
from fivesafes_tes.crates.profile import CrateRefused, NotYourProject
from fivesafes_tes.crates.workflow import WorkflowRefused
from fivesafes_tes.gateway.context import context
from fivesafes_tes.submission import federation, leases, results
from fivesafes_tes.submission.ids import BadPageToken
from fivesafes_tes.submission.tasks import IdempotencyConflict, InvalidTask, TaskNotFound, record_refusal

log = logging.getLogger(__name__)
RETRY_AFTER_S = "5"


class ErrorResponse(BaseModel):
    """What every non-2xx answer carries: a message that says what to fix."""

    detail: str


Responses = dict[int | str, dict[str, Any]]
"""OpenAPI `responses` for a route or router: status code to model and description."""

ERROR_RESPONSES: Responses = {
    400: {"model": ErrorResponse, "description": "The request is invalid; `detail` names the field."},
    401: {"model": ErrorResponse, "description": "No valid bearer token."},
    413: {"model": ErrorResponse, "description": "The request body is too large."},
    503: {"model": ErrorResponse, "description": "A dependency is unavailable; retry after Retry-After."},
}


def _printable(text: str) -> str:
    """`text` with each control character written as its escape: a detail may quote what a client
    sent (a field name, a tag key), and a NUL or terminal escape must not come back raw (nor break
    the no-NUL pattern the OpenAPI document promises for every string)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in "\n\t" else f"\\u{ord(c):04x}" for c in text)


def error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": _printable(detail)}, status_code=status, headers=headers)


def describe_validation(
    exc: RequestValidationError | ValidationError, labels: Mapping[str, str] | None = None
) -> str:
    """What was wrong with each field, named by its `labels` entry (a page's label) or else its place."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        where = ".".join(loc) or "body"
        where = (labels or {}).get(where, where)
        message = err.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route answers at this path (Starlette names only the first route's)."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in app.router.routes):
            allowed.append(method)
    return allowed


# The domain's refusals answered with their own message, and the status each is answered with: by the
# API (`install`) and by the pages that call the same functions (`refusal_status`).
REFUSALS: dict[type[Exception], int] = {
    InvalidTask: 400,
    BadPageToken: 400,
    results.InvalidRelease: 400,
    federation.InvalidRequest: 400,
    BagRefused: 400,
    CrateRefused: 400,
    WorkflowRefused: 400,
    federation.Forbidden: 403,
    results.NotApproved: 403,
    NotYourProject: 403,
    federation.NotFound: 404,
    leases.UnknownChild: 404,
    results.ReleaseConflict: 409,
    results.ApprovalsConflict: 409,
    federation.Conflict: 409,
    leases.StaleAttempt: 409,
    leases.IllegalTransition: 409,
    IdempotencyConflict: 409,
    results.Damaged: 422,
}


def refusal_status(exc: Exception) -> int | None:
    """The status `exc` is answered with (as its nearest class in REFUSALS says), None if it is no refusal."""
    for kind in type(exc).__mro__:
        if kind in REFUSALS:
            return REFUSALS[kind]
    return None


def _record_refusal(request: Request, refused: TaskNotFound) -> None:
    # Its own transaction: the one the route was in (a cancel's) has been rolled back.
    with context(request).db.write() as session:
        record_refusal(session, refused)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(400, describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            allowed = allowed_methods(app, request)
            headers["Allow"] = ", ".join(allowed)
            return error(405, f"{request.method} is not allowed here; use {' or '.join(allowed)}", headers)
        return error(exc.status_code, str(exc.detail), headers or None)

    async def _refused(_: Request, exc: Exception) -> JSONResponse:
        return error(refusal_status(exc) or 500, str(exc))

    for refusal in REFUSALS:
        app.add_exception_handler(refusal, _refused)

    @app.exception_handler(TaskNotFound)
    async def _missing(request: Request, exc: TaskNotFound) -> JSONResponse:
        await run_in_threadpool(_record_refusal, request, exc)
        return error(404, exc.message)

    @app.exception_handler(results.NoResultsStore)
    async def _no_results_store(_: Request, exc: results.NoResultsStore) -> JSONResponse:
        return error(503, str(exc), {"Retry-After": "60"})

    @app.exception_handler(results.IntegrityAlert)
    async def _altered(_: Request, exc: results.IntegrityAlert) -> JSONResponse:
        return error(503, str(exc))  # no Retry-After: the file stays altered until someone acts

    @app.exception_handler(JwksUnavailable)
    async def _issuer_down(request: Request, exc: JwksUnavailable) -> JSONResponse:
        log.error("identity provider keys unavailable on %s %s", request.method, request.url.path)
        return error(
            503,
            "the identity provider's keys cannot be fetched; retry shortly",
            {"Retry-After": RETRY_AFTER_S},
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_down(request: Request, exc: OperationalError | InterfaceError) -> JSONResponse:
        log.error("database error on %s %s: %s", request.method, request.url.path, type(exc.orig).__name__)
        return error(503, "the task database is unavailable; retry shortly", {"Retry-After": RETRY_AFTER_S})
