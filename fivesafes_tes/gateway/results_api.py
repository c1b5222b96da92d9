"""Released files: agents upload what their TRE approved (`PUT /agent/v1/children/{id}/files`), and
researchers list and download them (`/api/v1`), each download authorised by project and audited."""

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
from pydantic import BaseModel
from starlette.background import BackgroundTask

from fivesafes_tes import audit, failpoints
from fivesafes_tes.egress.store import ChecksumMismatch, ObjectExists, safe_key
from fivesafes_tes.gateway.agent_api import AGENT_RESPONSES, CurrentTre
from fivesafes_tes.gateway.errors import ERROR_RESPONSES, ErrorResponse
from fivesafes_tes.gateway.security import CurrentPrincipal, actor_of
from fivesafes_tes.submission import results, tasks
from fivesafes_tes.submission.tables import Child, ReleasedFile
from fivesafes_tes.submission.tasks import TaskNotFound, visible_task

log = logging.getLogger(__name__)
agent_router = APIRouter(prefix="/agent/v1", tags=["Agent"], responses=AGENT_RESPONSES)
router = APIRouter(
    prefix="/api/v1", tags=["Results"], responses={**ERROR_RESPONSES, 404: {"model": ErrorResponse}}
)
_CHUNK = 1 << 20


def _store(request: Request):  # type: ignore[no-untyped-def]
    store = request.app.state.ctx.results_store
    if store is None:
        raise HTTPException(
            503,
            "this gateway has no results store configured (FIVESAFES_RESULTS_*)",
            headers={"Retry-After": "60"},
        )
    return store


@agent_router.put(
    "/children/{child_id}/files",
    responses={
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
    """One approved file, streamed; kept only if its bytes hash to what the TRE recorded."""
    ctx = request.app.state.ctx
    store = _store(request)

    def expect() -> str:
        with ctx.db.read() as session:
            return results.expect_upload(session, tre, child_id).task_id

    task_id = await run_in_threadpool(expect)
    key = safe_key(
        "released", task_id, tre.name, kind, name.lstrip("/") if kind == "output" else f"step-{step}.{kind}"
    )
    incoming = results.Incoming(name=name, kind=kind, step=step, size=size, sha256=sha256)
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
            child = results.expect_upload(session, tre, child_id)
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
    """What each TRE released for this task, with the decisions and reasons of its output checkers."""
    ctx = request.app.state.ctx
    base = ctx.settings.public_url.rstrip("/")
    with ctx.db.read() as session:
        visible_task(session, actor_of(principal), task_id)
        released = results.released_files(session, [task_id]).get(task_id, [])
        children = tasks.children_of(session, [task_id]).get(task_id, [])
    tres = []
    for child, tre in children:
        files = [
            ReleasedFileOut(
                id=f.id,
                name=f.name,
                kind=f.kind,
                step=f.step,
                size=f.size,
                sha256=f.sha256,
                url=f"{base}/api/v1/results/{f.id}",
            )
            for f, t in released
            if t == tre
        ]
        tres.append(
            TreResults(tre=tre, stage=child.stage, files=files, disclosure=child.report.get("disclosure"))
        )
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
    ctx = request.app.state.ctx
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
