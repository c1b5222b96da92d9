"""The GA4GH TES 1.1 routes. Thin: parse, authorise, call the submission layer, render.

Task documents are returned as built by `fivesafes_tes.tes.render` (spec fields only, by
construction); the response models document them in OpenAPI without re-validating each one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from starlette.convertors import StringConvertor, register_url_convertor

from fivesafes_tes.db.base import utcnow
from fivesafes_tes.gateway.context import context
from fivesafes_tes.gateway.errors import ERROR_RESPONSES, ErrorResponse, Responses
from fivesafes_tes.gateway.security import BearerToken, CurrentPrincipal, actor_of, current_principal
from fivesafes_tes.submission import tasks as submission
from fivesafes_tes.submission.federation import resolve_target
from fivesafes_tes.tes import (
    CancelTaskResponse,
    CreateTaskResponse,
    ListTasksResponse,
    ServiceInfo,
    State,
    Task,
    TaskRequest,
    View,
)


class _TaskIdConvertor(StringConvertor):
    """A task id never holds ':' or '/', so `GET /tasks/x:cancel` is not mistaken for a task."""

    regex = "[^/:]+"


register_url_convertor("task_id", _TaskIdConvertor())

router = APIRouter(tags=["TaskService"], responses={k: v for k, v in ERROR_RESPONSES.items() if k != 400})
# Query maxima keep the longest valid URL, percent-encoded, inside the HTTP server's 64 KiB request head.
MAX_TAG_FILTERS = 8
MAX_FILTER_CHARS = 255
_NOT_FOUND: Responses = {404: {"model": ErrorResponse, "description": "No such task visible to you."}}
_BAD: Responses = {400: ERROR_RESPONSES[400]}


@router.get(
    "/service-info",
    response_model=ServiceInfo,
    response_model_exclude_none=True,
    operation_id="GetServiceInfo",
)
def get_service_info(request: Request) -> ServiceInfo:
    return context(request).service_info


# py-tes 0.4.x (pinned by the Snakemake and Toil TES plugins) asks here, and reads the TES 0.3
# shape (name, doc, storage): it refuses any other field.
@router.get("/tasks/service-info", include_in_schema=False)
def get_service_info_legacy(request: Request) -> dict[str, Any]:
    info: ServiceInfo = context(request).service_info
    return {"name": info.name, "doc": info.description or "", "storage": info.storage}


@router.post(
    "/tasks",
    response_model=CreateTaskResponse,
    operation_id="CreateTask",
    responses={
        **_BAD,
        403: {
            "model": ErrorResponse,
            "description": "Not a member of the project, or the project is not active.",
        },
        409: {"model": ErrorResponse, "description": "Idempotency-Key reused with another body."},
    },
)
async def create_task(
    request: Request,
    body: TaskRequest,
    credentials: BearerToken,
    idempotency_key: Annotated[str | None, Header(max_length=255, min_length=1)] = None,
) -> CreateTaskResponse:
    return await run_in_threadpool(_create, request, body, credentials, idempotency_key)


def _create(
    request: Request,
    body: TaskRequest,
    credentials: HTTPAuthorizationCredentials,
    idempotency_key: str | None,
) -> CreateTaskResponse:
    ctx = context(request)
    actor = actor_of(current_principal(request, credentials))
    submission.check_policy(body, ctx.policy)
    key = submission.target_key(actor, body, utcnow().date())
    target = ctx.targets.get(key)
    if target is None:
        with ctx.db.read() as session:
            target = resolve_target(session, actor.user_id, body.tags or {}, key[3])
        ctx.targets.put(key, target)
    submission.check_admission(body, target)
    with ctx.db.write() as session:
        created = submission.create_task(
            session, actor, body, ctx.policy, target, idempotency_key=idempotency_key
        )
    ctx.signal.notify(created.tre_ids)
    if created.tre_ids:
        ctx.metrics.tasks_created.inc()
    return CreateTaskResponse(id=created.task_id)


@router.get(
    "/tasks",
    response_model=ListTasksResponse,
    response_model_exclude_none=True,
    operation_id="ListTasks",
    responses=_BAD,
)
def list_tasks(
    request: Request,
    principal: CurrentPrincipal,
    name_prefix: Annotated[str | None, Query(max_length=2 * MAX_FILTER_CHARS)] = None,
    state: State | None = None,
    tag_key: Annotated[
        list[Annotated[str, Query(max_length=MAX_FILTER_CHARS)]] | None, Query(max_length=MAX_TAG_FILTERS)
    ] = None,
    tag_value: Annotated[
        list[Annotated[str, Query(max_length=MAX_FILTER_CHARS)]] | None, Query(max_length=MAX_TAG_FILTERS)
    ] = None,
    page_size: Annotated[int, Query(ge=1, le=submission.MAX_PAGE_SIZE)] = submission.DEFAULT_PAGE_SIZE,
    page_token: Annotated[str | None, Query(max_length=128)] = None,
    view: View = View.MINIMAL,
) -> JSONResponse:
    keys, values = tag_key or [], tag_value or []
    if len(values) > len(keys):
        raise submission.InvalidTask(
            "tag_value given without a matching tag_key; pass them in pairs, by position"
        )
    tags = [(k, values[i] if i < len(values) else "") for i, k in enumerate(keys)]
    query = submission.ListQuery(
        name_prefix=name_prefix,
        state=state,
        tags=tags,
        page_size=page_size,
        page_token=page_token,
        view=view,
        results_url=_results_url(request),
    )
    with context(request).db.read() as session:
        page = submission.list_tasks(session, actor_of(principal), query)
    result: dict[str, Any] = {"tasks": page.tasks}
    if page.next_page_token:
        result["next_page_token"] = page.next_page_token
    return JSONResponse(result)


@router.get(
    "/tasks/{id:task_id}",
    response_model=Task,
    response_model_exclude_none=True,
    operation_id="GetTask",
    responses={**_NOT_FOUND, **_BAD},
)
def get_task(
    request: Request, id: str, principal: CurrentPrincipal, view: View = View.MINIMAL
) -> JSONResponse:
    with context(request).db.read() as session:
        return JSONResponse(
            submission.get_task(session, actor_of(principal), id, view, results_url=_results_url(request))
        )


def _results_url(request: Request) -> str:
    return context(request).settings.public_url.rstrip("/") + "/api/v1/results"


@router.post(
    "/tasks/{id:task_id}:cancel",
    response_model=CancelTaskResponse,
    operation_id="CancelTask",
    responses=_NOT_FOUND,
)
def cancel_task(request: Request, id: str, principal: CurrentPrincipal) -> dict[str, Any]:
    ctx = context(request)
    with ctx.db.write() as session:
        tre_ids = submission.cancel_task(session, actor_of(principal), id)
    ctx.signal.notify(tre_ids)
    return {}
