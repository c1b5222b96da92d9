"""Released files, for researchers (`/api/v1`): what each TRE released for a task, and each file,
authorised by project and audited. Agents upload them through the agent API (`agent_api`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from fivesafes_tes.gateway.context import context
from fivesafes_tes.gateway.errors import ERROR_RESPONSES, ErrorResponse
from fivesafes_tes.gateway.security import CurrentPrincipal, actor_of
from fivesafes_tes.submission import researcher_view, results, tasks
from fivesafes_tes.submission.tasks import visible_task

router = APIRouter(
    prefix="/api/v1", tags=["Results"], responses={**ERROR_RESPONSES, 404: {"model": ErrorResponse}}
)


class ReleasedFileOut(BaseModel):
    id: int
    name: str
    kind: str
    step: int | None
    size: int
    sha256: str
    url: str


class TreResults(BaseModel):
    tre: str
    stage: str
    files: list[ReleasedFileOut]
    disclosure: dict[str, Any] | None


class ResultsOut(BaseModel):
    task_id: str
    tres: list[TreResults]


@router.get("/tasks/{task_id}/results", response_model=ResultsOut)
def list_results(request: Request, task_id: str, principal: CurrentPrincipal) -> ResultsOut:
    """What each TRE released for this task, with the decisions and reasons of its output checkers
    (the researcher view: nothing of what was not released)."""
    ctx = context(request)
    base = ctx.settings.public_url.rstrip("/")
    with ctx.db.read() as session:
        visible_task(session, actor_of(principal), task_id)
        released = results.released_files(session, [task_id]).get(task_id, [])
        children = tasks.children_of(session, [task_id]).get(task_id, [])
    results_url = f"{base}/api/v1/results"
    tres = [
        TreResults.model_validate(
            researcher_view.results_entry(
                child, tre, [f for f, _ in released if f.child_id == child.id], results_url
            )
        )
        for child, tre in children
    ]
    return ResultsOut(task_id=task_id, tres=tres)


@router.get(
    "/results/{file_id}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The released file."}},
)
def download(
    request: Request, file_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)], principal: CurrentPrincipal
) -> FileResponse:
    """A released file, checked against its SHA-256 before a byte is sent."""
    ctx = context(request)
    released, path = results.download(ctx.db, ctx.results_store, actor_of(principal), file_id)
    return FileResponse(
        path,
        filename=Path(released.name).name,
        media_type="application/octet-stream",
        headers={"X-Content-SHA256": released.sha256},
        background=BackgroundTask(path.unlink, missing_ok=True),
    )
