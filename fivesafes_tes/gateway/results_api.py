"""Released files, for researchers (`/api/v1`): what each TRE released for a task, and each file,
authorised by project and audited. Agents upload them through the agent API (`agent_api`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from fivesafes_tes.crates.record import activity_record, write_results_crate
from fivesafes_tes.db import Database
from fivesafes_tes.gateway.context import GatewayContext, context
from fivesafes_tes.gateway.errors import ERROR_RESPONSES, ErrorResponse
from fivesafes_tes.gateway.security import CurrentPrincipal, actor_of
from fivesafes_tes.submission import records, researcher_view, results, tasks
from fivesafes_tes.submission.tasks import Actor, visible_task

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
    results_url = f"{ctx.settings.public_url.rstrip('/')}/api/v1/results"
    return results_of(ctx.db, actor_of(principal), task_id, results_url)


def results_of(db: Database, actor: Actor, task_id: str, results_url: str) -> ResultsOut:
    """What each TRE released for `task_id`, as `actor` may see it (TaskNotFound if they may not), each
    file's URL under `results_url`: the one place the API and the gateway's pages read it."""
    with db.read() as session:
        visible_task(session, actor, task_id)
        released = results.released_files(session, [task_id]).get(task_id, [])
        children = tasks.children_of(session, [task_id]).get(task_id, [])
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
    return file_download(context(request), actor_of(principal), file_id)


def file_download(ctx: GatewayContext, actor: Actor, file_id: int) -> FileResponse:
    """Released file `file_id` for `actor` (`results.download`: authorised, verified, audited), streamed
    from a temporary copy removed once sent: the API's download and the pages' alike."""
    released, path = results.download(ctx.db, ctx.results_store, actor, file_id)
    return FileResponse(
        path,
        filename=Path(released.name).name,
        media_type="application/octet-stream",
        headers={"X-Content-SHA256": released.sha256},
        background=BackgroundTask(path.unlink, missing_ok=True),
    )


# The 5s-crate profile's HTTP signposting: a results crate is an RO-Crate in a zip.
_CRATE_PROFILE_LINK = '<https://w3id.org/ro/crate>; rel="profile"'


@router.get(
    "/tasks/{task_id}/crate",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/zip": {}},
            "description": "The results crate: a BagIt zip of the activity record and the released files.",
        }
    },
)
def results_crate(request: Request, task_id: str, principal: CurrentPrincipal) -> FileResponse:
    """The task's results crate (Five Safes RO-Crate, BagIt-zipped): its activity record and every file
    its TREs released, each checked against its SHA-256; nothing unreleased."""
    return crate_download(context(request), actor_of(principal), task_id)


def crate_download(ctx: GatewayContext, actor: Actor, task_id: str) -> FileResponse:
    """`task_id`'s results crate for `actor` (TaskNotFound if they may not see the task), written to a
    temporary file removed once sent: the API's and the pages' alike."""
    with ctx.db.read() as session:
        facts = records.task_facts(session, actor, task_id)
    handle, name = tempfile.mkstemp(prefix="crate-", suffix=".zip")
    path = Path(name)
    try:
        with open(handle, "wb") as out:
            write_results_crate(
                out, facts, lambda fact: records.open_released(ctx.db, ctx.results_store, actor, fact)
            )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return FileResponse(
        path,
        filename=f"task-{task_id}-results.zip",
        media_type="application/zip",
        headers={"Link": _CRATE_PROFILE_LINK},
        background=BackgroundTask(path.unlink, missing_ok=True),
    )


_RO_CRATE_JSONLD = 'application/ld+json; profile="https://w3id.org/ro/crate"'


@router.get(
    "/tasks/{task_id}/crate/metadata",
    response_class=JSONResponse,
    responses={200: {"content": {_RO_CRATE_JSONLD: {}}, "description": "ro-crate-metadata.json"}},
)
def crate_metadata(request: Request, task_id: str, principal: CurrentPrincipal) -> JSONResponse:
    """The task's activity record alone (its ro-crate-metadata.json), as it stands now."""
    ctx = context(request)
    with ctx.db.read() as session:
        facts = records.task_facts(session, actor_of(principal), task_id)
    return JSONResponse(activity_record(facts), media_type=_RO_CRATE_JSONLD)
