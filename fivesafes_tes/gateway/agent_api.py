"""The agent API (`/agent/v1`), every route of it: how a TRE's agent pulls work, reports on it, records
what its checkers approved and uploads exactly that. Outbound from the TRE only; each agent token is
bound to one TRE by its `tre` claim and sees nothing else."""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from fivesafes_tes import failpoints
from fivesafes_tes.auth import Role
from fivesafes_tes.gateway.context import context
from fivesafes_tes.gateway.errors import ERROR_RESPONSES, ErrorResponse, Responses
from fivesafes_tes.gateway.security import CurrentPrincipal
from fivesafes_tes.submission import federation, leases, results
from fivesafes_tes.submission.leases import Cancellation, Grant
from fivesafes_tes.submission.stages import Stage
from fivesafes_tes.submission.tables import Child, Tre
from fivesafes_tes.tes.admission import Admission
from fivesafes_tes.tes.models import NulFree

AGENT_RESPONSES: Responses = {
    **ERROR_RESPONSES,
    403: {"model": ErrorResponse, "description": "Not an agent of a known TRE."},
}
router = APIRouter(prefix="/agent/v1", tags=["Agent"], responses=AGENT_RESPONSES)


class _Body(NulFree):
    model_config = ConfigDict(strict=True, extra="forbid")


def current_tre(request: Request, principal: CurrentPrincipal) -> Tre:
    if not principal.has_role(Role.TRE_AGENT) or not principal.tre:
        raise HTTPException(
            403, "this route is for TRE agents: the token needs role tre-agent and a tre claim"
        )
    with context(request).db.read() as session:
        tre = session.scalar(select(Tre).where(Tre.name == principal.tre))
    if tre is None:
        raise HTTPException(403, f"TRE {principal.tre!r} is not registered with this gateway")
    return tre


CurrentTre = Annotated[Tre, Depends(current_tre)]


class LeaseRequest(_Body):
    wait_s: float = Field(
        default=20.0, ge=0, le=30, description="Long-poll: answer at once when work appears."
    )
    max: int = Field(default=10, ge=1, le=100)


class LeaseResponse(BaseModel):
    leases: list[Grant]  # the field's name hides the module inside the class: import the types
    cancel: list[Cancellation]


@router.post("/leases", response_model=LeaseResponse)
async def lease_work(request: Request, body: LeaseRequest, tre: CurrentTre) -> LeaseResponse:
    ctx = context(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + body.wait_s

    def attempt() -> tuple[list[Grant], list[Cancellation]]:
        with ctx.db.read() as session:
            if not leases.work_waiting(session, tre):
                return [], leases.pending_cancellations(session, tre)
        with ctx.db.write() as session:
            grants = leases.lease(
                session,
                tre,
                limit=body.max,
                ttl_s=ctx.settings.lease_ttl_s,
                max_lost_leases=ctx.settings.max_lost_leases,
            )
            return grants, leases.pending_cancellations(session, tre)

    while True:
        entry = ctx.signal.register(tre.id)
        try:
            grants, cancels = await run_in_threadpool(attempt)
            remaining = deadline - loop.time()
            if grants or cancels or remaining <= 0 or ctx.signal.closed:
                return LeaseResponse(leases=grants, cancel=cancels)
            await asyncio.wait({entry[1]}, timeout=min(ctx.settings.lease_recheck_s, remaining))
        finally:
            ctx.signal.unregister(tre.id, entry)


class HeldLease(_Body):
    child_id: str = Field(max_length=36)
    attempt: int = Field(ge=1)


class HeartbeatRequest(_Body):
    children: list[HeldLease] = Field(max_length=1000)


class HeartbeatResponse(BaseModel):
    children: dict[str, str] = Field(description="child id -> ok | stale | canceled | ended | unknown")


@router.post("/heartbeat", response_model=HeartbeatResponse)
def heartbeat(request: Request, body: HeartbeatRequest, tre: CurrentTre) -> HeartbeatResponse:
    ctx = context(request)
    with ctx.db.write() as session:
        answer = leases.heartbeat(
            session, tre, [(c.child_id, c.attempt) for c in body.children], ttl_s=ctx.settings.lease_ttl_s
        )
    return HeartbeatResponse(children=answer)


class EventRequest(_Body):
    attempt: int = Field(ge=1)
    seq: int = Field(ge=0, le=2**31 - 1)
    stage: Stage = Field(strict=False)
    message: str | None = Field(
        default=None,
        max_length=4096,
        description="A plain-language system_logs line; kept only on stages before the run (from `running` "
        "on, the gateway shows fixed lines of its own).",
    )
    report: dict[str, Any] | None = Field(
        default=None,
        description="With an ending after review: the exported disclosure record, and, when something "
        "was released, the steps' exit codes and times and the released logs' tails. "
        "`notice` names a fixed line.",
    )


class EventResponse(BaseModel):
    stage: str
    applied: bool


@router.post(
    "/children/{child_id}/events",
    response_model=EventResponse,
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
)
def child_event(request: Request, child_id: str, body: EventRequest, tre: CurrentTre) -> EventResponse:
    ctx = context(request)
    owed = False
    with ctx.db.write() as session:
        result = leases.record_event(
            session,
            tre,
            child_id,
            attempt=body.attempt,
            seq=body.seq,
            stage=body.stage,
            message=body.message,
            report=body.report,
            ttl_s=ctx.settings.lease_ttl_s,
            paused_for_review=ctx.settings.paused_for_review,
        )
        if Stage(result.stage) in leases.RELEASE_ENDINGS and ctx.deliverer is not None:
            child = session.get(Child, child_id)  # loaded by record_event: no second read
            assert child is not None  # record_event raised UnknownChild otherwise
            # owed from the commit that releases the files, whatever happens next
            owed = ctx.deliverer.owe(session, child)
    if Stage(result.stage) in leases.RELEASE_ENDINGS:
        failpoints.reach("release.ended")
    if owed:  # the delivery loop copies; this request (the agent's) does not wait for it
        ctx.wake_deliveries()
    return EventResponse(stage=result.stage, applied=result.applied)


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


@router.put(
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
    files = [results.received(**f.model_dump()) for f in body.files]
    with context(request).db.write() as session:
        recorded = results.record_approvals(session, tre, child_id, files)
    return ApprovalsOut(recorded=recorded, files=len(files))


class UploadOut(BaseModel):
    name: str
    stored: bool = Field(description="False when exactly this file was stored before.")


@router.put(
    "/children/{child_id}/files",
    response_model=UploadOut,
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
) -> UploadOut:
    """One approved file, streamed; kept only if it is among the child's recorded approvals and its
    bytes hash to what the TRE recorded."""
    ctx = context(request)
    file = results.received(name, kind, step, size, sha256)
    upload = await run_in_threadpool(results.expect, ctx.db, ctx.results_store, tre, child_id, file)
    with results.Spool() as spool:
        async for chunk in request.stream():
            spool.write(chunk)
        stored = await run_in_threadpool(results.keep, ctx.db, ctx.results_store, tre, upload, spool)
    return UploadOut(name=name, stored=stored)


@router.post("/children/{child_id}/cancel-ack", responses={404: {"model": ErrorResponse}})
def cancel_ack(request: Request, child_id: str, tre: CurrentTre) -> dict[str, Any]:
    with context(request).db.write() as session:
        leases.acknowledge_cancel(session, tre, child_id)
    return {}


class ProjectOut(BaseModel):
    name: str
    title: str
    starts_on: date | None
    ends_on: date | None
    members: list[str]


class SyncResponse(BaseModel):
    tre: str
    projects: list[ProjectOut]


@router.get("/sync", response_model=SyncResponse)
def sync(request: Request, tre: CurrentTre) -> SyncResponse:
    with context(request).db.read() as session:
        projects = leases.sync(session, tre)
    return SyncResponse(tre=tre.name, projects=[ProjectOut(**p) for p in projects])


class PolicyResponse(BaseModel):
    changed: bool = Field(description="False when the gateway held this document already.")


@router.put("/policy", response_model=PolicyResponse)
def publish_policy(request: Request, body: Admission, tre: CurrentTre) -> PolicyResponse:
    """What this TRE will run: the gateway refuses at submission, in the TRE's words, a task the
    TRE would refuse (the TRE checks again). Agents publish it at every sync."""
    ctx = context(request)
    with ctx.db.write() as session:
        changed = federation.publish_policy(session, tre, body)
    if changed:  # cached targets carry the policies: the new one applies from the next submission
        ctx.targets.clear()
    return PolicyResponse(changed=changed)


class DecisionIn(_Body):
    project: str = Field(max_length=63)
    username: str = Field(
        default="", max_length=255, description="Empty for a decision on the project itself."
    )
    decision: str = Field(pattern="^(approved|rejected|pending)$")
    reason: str = Field(default="", max_length=2000)
    decided_by: str = Field(default="", max_length=255)
    decided_at: datetime = Field(strict=False)


class DecisionsRequest(_Body):
    decisions: list[DecisionIn] = Field(max_length=10000)


@router.post("/decisions")
def decisions(request: Request, body: DecisionsRequest, tre: CurrentTre) -> dict[str, int]:
    with context(request).db.write() as session:
        changed = leases.record_decisions(
            session, tre, [leases.Decision(**d.model_dump()) for d in body.decisions]
        )
    return {"changed": changed}
