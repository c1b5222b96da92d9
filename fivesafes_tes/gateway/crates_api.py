"""Five Safes request crates, for researchers (`/api/v1/crates`): a BagIt zip in, a task out.

Thin: the body streams to a spool file under `FIVESAFES_MAX_CRATE_BYTES` (never into memory), and the
submission layer reads it (`submission.crates.accept_crate`). The spool file is gone when the answer
is sent, whatever the answer was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from fivesafes_tes.auth import Principal
from fivesafes_tes.crates.bagit import BagLimits
from fivesafes_tes.gateway.context import GatewayContext, context
from fivesafes_tes.gateway.errors import ERROR_RESPONSES, ErrorResponse, error
from fivesafes_tes.gateway.security import CurrentPrincipal
from fivesafes_tes.submission import crates

# The body streams to disk under the route's own cap, not the gateway's JSON body limit.
CRATE_UPLOADS = re.compile(r"^/api/v1/crates$")
MEDIA_TYPE = "application/zip"

router = APIRouter(prefix="/api/v1", tags=["Crates"], responses=ERROR_RESPONSES)


class CrateCreated(BaseModel):
    id: str


@router.post(
    "/crates",
    response_model=CrateCreated,
    status_code=201,
    operation_id="SubmitCrate",
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "A Five Safes request crate (5s-crate 0.4): one BagIt bag, zipped.",
            "content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    responses={
        400: {
            "model": ErrorResponse,
            "description": "The zip, its bag, its metadata or its workflow was refused; `detail` says what "
            "to change. Nothing was stored.",
        },
        403: {
            "model": ErrorResponse,
            "description": "The crate's project is not one of yours, or the project is not active.",
        },
        409: {"model": ErrorResponse, "description": "Idempotency-Key reused with another crate."},
        413: {"model": ErrorResponse, "description": "The zip is over FIVESAFES_MAX_CRATE_BYTES."},
        415: {"model": ErrorResponse, "description": "The body is not sent as application/zip."},
    },
)
async def submit_crate(
    request: Request,
    principal: CurrentPrincipal,
    tres: Annotated[
        str | None,
        Query(max_length=1024, description="TREs to run in (`|` or `,` separated); default: the project's."),
    ] = None,
    idempotency_key: Annotated[str | None, Header(max_length=255, min_length=1)] = None,
) -> JSONResponse:
    """Submit a BagIt-zipped Five Safes request crate; its task runs as any TES task does.

    The zip is judged before anything is extracted (paths, links, sizes, manifests), its metadata
    against the profile; the crate's agent becomes you, its project must be one of yours, and any
    AssessAction it carries is removed."""
    ctx = context(request)
    cap = ctx.settings.max_crate_bytes
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != MEDIA_TYPE:
        return await _refuse(
            ctx,
            principal,
            415,
            f"send the crate as a BagIt zip with Content-Type: {MEDIA_TYPE} (it came as "
            f"{media or 'no content type'})",
        )
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > cap):
        return await _refuse(ctx, principal, 413, _too_large(cap))
    spool_dir = ctx.settings.data_dir / "crate-spool"
    spool_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=spool_dir, prefix="crate-", suffix=".zip") as spool:
        size, digest = 0, hashlib.sha512()  # hashed as it arrives: the bag's reader need not again
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    return await _refuse(ctx, principal, 413, _too_large(cap))
                digest.update(chunk)
                spool.write(chunk)
        except ClientDisconnect:
            return error(400, "the upload was cut off before its end; send the crate again")
        spool.flush()
        intake = crates.CrateIntake(
            policy=ctx.policy, limits=dataclasses.replace(BagLimits(), max_zip_bytes=cap)
        )
        created = await run_in_threadpool(
            crates.accept_crate,
            ctx.db,
            principal,
            Path(spool.name),
            intake,
            tres=tres,
            idempotency_key=idempotency_key,
            zip_sha512=digest.hexdigest(),
        )
    ctx.signal.notify(created.tre_ids)
    if created.tre_ids:
        ctx.metrics.tasks_created.inc()
    return JSONResponse({"id": created.task_id}, status_code=201)


def _too_large(cap: int) -> str:
    return (
        f"the crate is over this gateway's {cap}-byte limit (FIVESAFES_MAX_CRATE_BYTES); send a smaller "
        "one: large data belongs in the TRE, named by the crate, not inside it"
    )


async def _refuse(ctx: GatewayContext, principal: Principal, status: int, reason: str) -> JSONResponse:
    def audit() -> None:
        with ctx.db.write() as session:
            crates.record_crate_refusal(session, principal.username, reason, status)

    await run_in_threadpool(audit)
    return error(status, reason)
