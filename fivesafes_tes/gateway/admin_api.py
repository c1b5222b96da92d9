"""The federation admin API (`/admin/v1`): TREs, projects, their TREs and members, and a new start for
given-up deliveries. Every change is audited; only the `federation-admin` role may call it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from fivesafes_tes.auth import Principal, Role
from fivesafes_tes.gateway.context import context
from fivesafes_tes.gateway.errors import ERROR_RESPONSES, ErrorResponse
from fivesafes_tes.gateway.security import CurrentPrincipal
from fivesafes_tes.submission import deliveries, federation
from fivesafes_tes.submission.tables import Task
from fivesafes_tes.tes.models import NulFree

router = APIRouter(
    prefix="/admin/v1",
    tags=["Federation admin"],
    responses={
        **ERROR_RESPONSES,
        403: {"model": ErrorResponse, "description": "Needs the federation-admin role."},
        404: {"model": ErrorResponse, "description": "No such TRE, project or member."},
        409: {"model": ErrorResponse, "description": "Already exists."},
    },
)


def federation_admin(request: Request, principal: CurrentPrincipal) -> Iterator[Principal]:
    if not principal.has_role(Role.FEDERATION_ADMIN):
        raise HTTPException(403, "this route needs the federation-admin role")
    yield principal
    if request.method != "GET":
        changed(request)


def changed(request: Request) -> None:
    """After a change to the federation committed (here or in the federation page): this replica sees
    it at once, others within seconds."""
    context(request).targets.clear()


Admin = Annotated[Principal, Depends(federation_admin)]


class _Body(NulFree):
    model_config = ConfigDict(strict=True, extra="forbid")


class TreIn(_Body):
    name: str = Field(max_length=63, description="Lower-case slug; the agent's token carries it as `tre`.")
    title: str = Field(default="", max_length=255)


class TreOut(BaseModel):
    name: str
    title: str


class ProjectIn(_Body):
    name: str = Field(max_length=63)
    title: str = Field(default="", max_length=255)
    starts_on: date | None = Field(default=None, strict=False)
    ends_on: date | None = Field(default=None, strict=False)
    tres: list[str] = Field(default_factory=list, max_length=100)


class ProjectPatch(_Body):
    title: str | None = Field(default=None, max_length=255)
    starts_on: date | None = Field(default=None, strict=False)
    ends_on: date | None = Field(default=None, strict=False)


class TresIn(_Body):
    tres: list[str] = Field(max_length=100)


class MemberIn(_Body):
    username: str = Field(min_length=1, max_length=255)
    default: bool = False


@router.get("/tres", response_model=list[TreOut])
def list_tres(request: Request, _: Admin) -> list[TreOut]:
    with context(request).db.read() as session:
        return [TreOut(name=t.name, title=t.title) for t in federation.list_tres(session)]


@router.post("/tres", response_model=TreOut, status_code=201)
def add_tre(request: Request, body: TreIn, admin: Admin) -> TreOut:
    with context(request).db.write() as session:
        tre = federation.add_tre(session, admin.username, body.name, body.title)
        return TreOut(name=tre.name, title=tre.title)


@router.get("/projects", response_model=list[federation.ProjectView])
def list_projects(request: Request, _: Admin) -> list[federation.ProjectView]:
    with context(request).db.read() as session:
        return list(federation.describe_projects(session))


def _project(request: Request, name: str) -> federation.ProjectView:
    with context(request).db.read() as session:
        found = federation.describe_projects(session, [name])
    if not found:
        raise federation.NotFound(f"no project named {name!r}")
    return found[0]


@router.post("/projects", response_model=federation.ProjectView, status_code=201)
def add_project(request: Request, body: ProjectIn, admin: Admin) -> federation.ProjectView:
    with context(request).db.write() as session:
        federation.add_project(
            session,
            admin.username,
            body.name,
            title=body.title,
            starts_on=body.starts_on,
            ends_on=body.ends_on,
            tres=body.tres,
        )
    return _project(request, body.name)


@router.patch("/projects/{name}", response_model=federation.ProjectView)
def update_project(request: Request, name: str, body: ProjectPatch, admin: Admin) -> federation.ProjectView:
    with context(request).db.write() as session:
        federation.update_project(
            session, admin.username, name, title=body.title, starts_on=body.starts_on, ends_on=body.ends_on
        )
    return _project(request, name)


@router.put("/projects/{name}/tres", response_model=federation.ProjectView)
def set_tres(request: Request, name: str, body: TresIn, admin: Admin) -> federation.ProjectView:
    with context(request).db.write() as session:
        federation.set_project_tres(session, admin.username, name, body.tres)
    return _project(request, name)


@router.post("/projects/{name}/members", response_model=federation.ProjectView)
def add_member(request: Request, name: str, body: MemberIn, admin: Admin) -> federation.ProjectView:
    with context(request).db.write() as session:
        federation.add_member(session, admin.username, name, body.username, default=body.default)
    return _project(request, name)


@router.delete("/projects/{name}/members/{username}", response_model=federation.ProjectView)
def remove_member(request: Request, name: str, username: str, admin: Admin) -> federation.ProjectView:
    with context(request).db.write() as session:
        federation.remove_member(session, admin.username, name, username)
    return _project(request, name)


class RedeliverOut(BaseModel):
    children: list[str] = Field(description="Children whose given-up delivery is owed again.")


@router.post("/tasks/{task_id}/redeliver", response_model=RedeliverOut)
def redeliver(request: Request, task_id: str, admin: Admin) -> RedeliverOut:
    """Try again the deliveries of a task's released outputs that were given up after
    `FIVESAFES_DELIVERY_ATTEMPTS` (once the destination is fixed)."""
    ctx = context(request)
    if ctx.deliverer is None:
        raise HTTPException(
            409,
            "this gateway delivers nowhere: set FIVESAFES_DELIVERY_BUCKETS or FIVESAFES_FILE_OUTPUT_ROOT, "
            "and a results store",
        )
    with ctx.db.write() as session:
        if session.get(Task, task_id) is None:
            raise HTTPException(404, f"no task {task_id}")
        try:
            children = deliveries.redeliver(session, admin.username, task_id)
        except deliveries.NothingGivenUp as exc:
            raise HTTPException(409, str(exc)) from None
    ctx.wake_deliveries()
    return RedeliverOut(children=children)
