"""Released files: agents record what their TRE approved (`PUT /agent/v1/children/{id}/approvals`),
then upload exactly that (`PUT /agent/v1/children/{id}/files`), and researchers list and download
them (`/api/v1`), each download authorised by project and audited."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from fivesafes_tes import audit, failpoints
from fivesafes_tes.egress.store import ChecksumMismatch, ObjectExists, UnsafeKey, safe_key
from fivesafes_tes.gateway.agent_api import AGENT_RESPONSES, CurrentTre
from fivesafes_tes.gateway.context import context
from fivesafes_tes.gateway.errors import ERROR_RESPONSES, ErrorResponse
from fivesafes_tes.gateway.security import CurrentPrincipal, actor_of
from fivesafes_tes.submission import researcher_view, results, tasks
from fivesafes_tes.submission.tables import Child, ReleasedFile
from fivesafes_tes.submission.tasks import TaskNotFound, visible_task

log = logging.getLogger(__name__)
agent_router = APIRouter(prefix="/agent/v1", tags=["Agent"], responses=AGENT_RESPONSES)
router = APIRouter(
    prefix="/api/v1", tags=["Results"], responses={**ERROR_RESPONSES, 404: {"model": ErrorResponse}}
)
_CHUNK = 1 << 20


def _store(request: Request):  # type: ignore[no-untyped-def]
    store = context(request).results_store
    if store is None:
        raise HTTPException(
            503,
            "this gateway has no results store configured (FIVESAFES_RESULTS_*)",
            headers={"Retry-After": "60"},
        )
    return store


def _key_part(file: results.Incoming) -> str:
    """The file's name as a part of its key in the results store, or 400 saying what is wrong."""
    try:
        return safe_key(file.key_part())
    except (results.InvalidRelease, UnsafeKey) as exc:
        raise HTTPException(400, f"name: {exc}") from None


class ApprovedFileIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    name: str = Field(
        min_length=1, max_length=1024, description="Container path of an output, or step-N.stdout|stderr."
    )
    kind: Literal["output", "stdout", "stderr"]
    step: int | None = Field(
        default=None, ge=0, le=2**31 - 1, description="The step of a log; none for an output."
    )
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    size: int = Field(ge=0, le=2**63 - 1)


class ApprovalsIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    files: list[ApprovedFileIn] = Field(min_length=1, max_length=10000)


class ApprovalsOut(BaseModel):
    recorded: bool = Field(description="False when exactly these approvals were recorded before.")
    files: int


@agent_router.put(
    "/children/{child_id}/approvals",
    response_model=ApprovalsOut,
    responses={
        404: {"model": ErrorResponse},
        409: {
            "model": ErrorResponse,
            "description": "Other approvals were recorded already, or the child is not awaiting review.",
        },
    },
)
def record_approvals(request: Request, child_id: str, body: ApprovalsIn, tre: CurrentTre) -> ApprovalsOut:
    """What the TRE's output checkers approved for this child, recorded once before any upload: the
    gateway then stores exactly these files."""
    files = [results.Incoming(**f.model_dump()) for f in body.files]
    for file in files:
        _key_part(file)
    with context(request).db.write() as session:
        recorded = results.record_approvals(session, tre, child_id, files)
    return ApprovalsOut(recorded=recorded, files=len(files))


@agent_router.put(
    "/children/{child_id}/files",
    responses={
        403: {
            "model": ErrorResponse,
            "description": "Not an agent of the child's TRE, or a file not among the child's recorded "
            "approvals (audited); nothing stored.",
        },
        404: {"model": ErrorResponse},
        409: {"model": ErrorResponse},
        422: {"model": ErrorResponse, "description": "The bytes do not match the SHA-256 or size given."},
    },
)
async def upload_released_file(
    request: Request,
    child_id: str,
    tre: CurrentTre,
    name: Annotated[str, Query(min_length=1, max_length=1024)],
    kind: Literal["output", "stdout", "stderr"],
    sha256: Annotated[str, Query(pattern="^[0-9a-f]{64}$")],
    size: Annotated[int, Query(ge=0)],
    step: Annotated[int | None, Query(ge=0)] = None,
) -> dict:
    """One approved file, streamed; kept only if it is among the child's recorded approvals and its
    bytes hash to what the TRE recorded."""
    ctx = context(request)
    store = _store(request)
    incoming = results.Incoming(name=name, kind=kind, step=step, size=size, sha256=sha256)
    part = _key_part(incoming)

    def expect() -> str:
        with ctx.db.read() as session:
            try:
                return results.expect_upload(session, tre, child_id, incoming).task_id
            except results.NotApproved as exc:
                refused = exc
        with ctx.db.write() as session:
            results.refuse_upload(session, tre, child_id, incoming, refused)
        raise refused

    task_id = await run_in_threadpool(expect)
    try:
        key = safe_key("released", task_id, tre.name, kind, part)
    except UnsafeKey as exc:
        raise HTTPException(400, f"name: {exc}") from None
    with tempfile.NamedTemporaryFile(prefix="release-", delete=True) as tmp:
        digest, received = hashlib.sha256(), 0
        async for chunk in request.stream():
            digest.update(chunk)
            received += len(chunk)
            tmp.write(chunk)
        tmp.flush()
        if digest.hexdigest() != sha256 or received != size:

            def alert() -> None:
                with ctx.db.write() as session:
                    audit.record(
                        session,
                        actor=f"agent:{tre.name}",
                        action="release.integrity",
                        object=f"child:{child_id}",
                        outcome="alert",
                        detail={"name": name, "expected": sha256, "received_bytes": received},
                    )

            await run_in_threadpool(alert)
            raise HTTPException(
                422,
                f"{name} arrived damaged: its SHA-256 or size differs from the TRE's record; "
                "nothing was stored",
            )
        try:
            await run_in_threadpool(lambda: store.put_file(key, tmp.name, sha256=sha256, if_absent=True))
            failpoints.reach("release.stored")
        except ObjectExists:
            held = await run_in_threadpool(store.head, key)
            if held is None or held.sha256 != sha256:
                raise HTTPException(409, f"{name} is already stored with other content") from None

    def record() -> bool:
        with ctx.db.write() as session:
            child = results.expect_upload(session, tre, child_id, incoming)
            return results.accept(session, tre, child, incoming, key)[1]

    stored = await run_in_threadpool(record)
    failpoints.reach("release.recorded")
    return {"name": name, "stored": stored}


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
    disclosure: dict | None


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
    actor = actor_of(principal)
    with ctx.db.read() as session:
        released = session.get(ReleasedFile, file_id)
        try:
            if released is None or session.get(Child, released.child_id).stage not in results.VISIBLE_AFTER:
                raise LookupError(file_id)
            visible_task(session, actor, released.task_id)
        except LookupError:
            raise TaskNotFound(
                str(file_id),
                actor=actor.name,
                exists=released is not None,
                object=f"released:{file_id}",
                message=f"no released file {file_id} visible to you",
            ) from None
    store = _store(request)
    handle, name = tempfile.mkstemp(prefix="download-")
    os.close(handle)  # get_to_file writes beside it and renames over it
    tmp = Path(name)
    try:
        store.get_to_file(released.key, tmp, expect_sha256=released.sha256)
    except ChecksumMismatch:
        tmp.unlink(missing_ok=True)
        with ctx.db.write() as session:
            audit.record(
                session,
                actor=actor.name,
                action="download",
                object=f"released:{file_id}",
                outcome="integrity_alert",
                detail={"name": released.name},
            )
        log.error("released file %s no longer matches its SHA-256; download refused", file_id)
        raise HTTPException(
            503, "this file failed its integrity check and was not sent; the TRE has been alerted"
        ) from None
    with ctx.db.write() as session:
        audit.record(
            session,
            actor=actor.name,
            action="download",
            object=f"released:{file_id}",
            outcome="ok",
            detail={"name": released.name, "sha256": released.sha256},
        )
    return FileResponse(
        tmp,
        filename=Path(released.name).name,
        media_type="application/octet-stream",
        headers={"X-Content-SHA256": released.sha256},
        background=BackgroundTask(tmp.unlink, missing_ok=True),
    )
