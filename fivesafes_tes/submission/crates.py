"""Tasks submitted as Five Safes request crates (`POST /api/v1/crates`).

A crate becomes a task by the path every TES task takes (`tasks.create_task`: the gateway's policy,
the project's target TREs and what they published they will run, idempotency, the audit record), with
the crate's project as its `project` tag; beside the task, in the same transaction, a `RequestCrate`
row keeps the crate's metadata as intake left it (the base of the task's activity record) and what
intake checked. A refused crate stores nothing but the audit record of its refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fivesafes_tes import audit
from fivesafes_tes.auth.principal import Principal
from fivesafes_tes.crates.bagit import BagLimits, BagRefused, VerifiedBag, open_bag
from fivesafes_tes.crates.profile import CrateRefused, NotYourProject, RequestCrate, Submitter, read_request
from fivesafes_tes.crates.workflow import CrateWorkflow, WorkflowRefused, task_from_crate
from fivesafes_tes.db import Database
from fivesafes_tes.db.base import utcnow
from fivesafes_tes.devimages import RUNNER_IMAGE
from fivesafes_tes.submission import federation
from fivesafes_tes.submission.federation import Target
from fivesafes_tes.submission.tables import Membership, Project
from fivesafes_tes.submission.tables import RequestCrate as RequestCrateRow
from fivesafes_tes.submission.tasks import (
    Actor,
    Created,
    IdempotencyConflict,
    InvalidTask,
    SubmissionPolicy,
    check_admission,
    check_policy,
    create_task,
)
from fivesafes_tes.tes import TaskRequest
from fivesafes_tes.tes.admission import shared_runner

# Every refusal a crate can meet on its way in, each with words that say what to change.
REFUSALS: tuple[type[Exception], ...] = (
    BagRefused,
    CrateRefused,
    WorkflowRefused,
    InvalidTask,
    IdempotencyConflict,
    federation.Forbidden,
    federation.InvalidRequest,
)
MAX_REASON_CHARS = 1000


@dataclass(frozen=True)
class BagFacts:
    """What the gateway knows of the zip a crate came in, kept beside the task."""

    external_identifier: str
    zip_sha512: str
    zip_size: int

    @classmethod
    def of(cls, bag: VerifiedBag) -> BagFacts:
        return cls(bag.external_identifier, bag.zip_sha512, bag.zip_size)


@dataclass(frozen=True)
class CrateIntake:
    """How this gateway takes crates: its task policy, the limits a zip is read within, and the runner
    image a CWL workflow runs in where the target TREs have published none."""

    policy: SubmissionPolicy
    limits: BagLimits
    default_runner: str = RUNNER_IMAGE


def submitter_of(session: Session, principal: Principal) -> Submitter:
    """The authenticated person as a crate is judged against them: who they are, and their projects."""
    projects = session.scalars(
        select(Project.name)
        .join(Membership, Membership.project_id == Project.id)
        .where(Membership.user_id == principal.user_id)
        .order_by(Project.name)
    )
    return Submitter(
        username=principal.username,
        subject=principal.subject,
        issuer=principal.issuer,
        projects=tuple(projects),
    )


def accept_crate(
    db: Database,
    principal: Principal,
    zip_path: Path,
    intake: CrateIntake,
    *,
    tres: str | None = None,
    idempotency_key: str | None = None,
    zip_sha512: str | None = None,
) -> Created:
    """Read the BagIt zip at `zip_path` (nothing extracted), judge its request against the profile and
    the submitter, and create its task; a refusal raises one of REFUSALS and is audited. `zip_sha512`:
    the zip's SHA-512 if the caller hashed it as it arrived."""
    actor = Actor(user_id=principal.user_id, name=principal.username)
    facts: BagFacts | None = None
    with refusals_audited(db, actor, lambda: facts):
        with open_bag(zip_path, intake.limits, zip_sha512=zip_sha512) as bag:
            facts = BagFacts.of(bag)
            with db.read() as session:
                submitter = submitter_of(session, principal)
            request = read_request(bag, submitter)
            with db.read() as session:
                tags: dict[str, str | None] = {"project": request.project, "tres": tres}
                target = federation.resolve_target(session, actor.user_id, tags, utcnow().date())
            workflow = _workflow(bag, request, target, intake.default_runner)
        with db.write() as session:
            return submit_crate(
                session,
                actor,
                request,
                workflow,
                facts,
                intake.policy,
                tres=tres,
                idempotency_key=idempotency_key,
            )


def _workflow(bag: VerifiedBag, request: RequestCrate, target: Target, default_runner: str) -> CrateWorkflow:
    """The crate's workflow as a task, a CWL workflow in the runner image every target TRE offers."""
    try:
        runner: str | None = shared_runner(target.policies.values(), "cwl", default_runner)
        differ = ""
    except ValueError as exc:  # only a CWL workflow needs the one image
        runner, differ = None, str(exc)
    try:
        return task_from_crate(bag, request, runner)
    except WorkflowRefused as exc:
        if differ:
            raise WorkflowRefused(f"{exc} ({differ})") from None
        raise


def submit_crate(
    session: Session,
    actor: Actor,
    request: RequestCrate,
    workflow: CrateWorkflow,
    facts: BagFacts,
    policy: SubmissionPolicy,
    *,
    tres: str | None = None,
    idempotency_key: str | None = None,
    today: date | None = None,
) -> Created:
    """Create the crate's task as any TES task is created, tagged with the crate's project, and keep
    the crate beside it, in the caller's transaction: a refusal raised here leaves nothing behind."""
    task = project_task(workflow.task, request.project, tres)
    check_policy(task, policy)
    target = federation.resolve_target(session, actor.user_id, task.tags or {}, today or utcnow().date())
    check_admission(task, target)
    created = create_task(
        session,
        actor,
        task,
        policy,
        target,
        idempotency_key=idempotency_key,
        detail={
            "crate": {
                "external_identifier": facts.external_identifier,
                "zip_sha512": facts.zip_sha512,
                "language": workflow.language,
                "stripped_assess_actions": request.stripped_assess_actions,
            }
        },
    )
    if created.tre_ids:  # a new task, not the replay of an Idempotency-Key
        session.add(
            RequestCrateRow(
                task_id=created.task_id,
                external_identifier=facts.external_identifier,
                zip_sha512=facts.zip_sha512,
                zip_size=facts.zip_size,
                language=workflow.language,
                metadata_doc=request.metadata,
                checks=request.checks,
                stripped_assess_actions=request.stripped_assess_actions,
                received_at=utcnow(),
            )
        )
        session.flush()
    return created


def project_task(task: TaskRequest, project: str, tres: str | None) -> TaskRequest:
    """The crate's task tagged with the crate's project (and the TREs asked for): the crate's
    `sourceOrganization` decides the project, and a task document inside it may not say otherwise."""
    replaced = ("project", "tres") if tres else ("project",)
    tags = {k: v for k, v in (task.tags or {}).items() if k.lower() not in replaced}
    named = {(v or "").strip().lower() for k, v in (task.tags or {}).items() if k.lower() == "project"}
    if named - {"", project}:
        raise CrateRefused(
            f"the TES task in the crate is tagged project {', '.join(sorted(named - {''}))!r}, but the "
            f"crate's sourceOrganization is project {project!r}; remove the tag or make them agree"
        )
    tags["project"] = project
    if tres:
        tags["tres"] = tres
    return task.model_copy(update={"tags": tags})


def record_crate_refusal(
    session: Session, actor: str, reason: str, status: int, facts: BagFacts | None = None
) -> None:
    """The audit record of one refused crate: who sent it, why it was refused, and which zip it was."""
    detail: dict[str, Any] = {"reason": reason[:MAX_REASON_CHARS], "status": status}
    if facts is not None:
        detail["external_identifier"] = facts.external_identifier[:200]
        detail["zip_size"] = facts.zip_size
    audit.record(
        session,
        actor=actor,
        action="crate.refused",
        object=f"crate:{facts.zip_sha512}" if facts is not None else "crate:unread",
        outcome="denied",
        detail=detail,
    )


def refusal_status(exc: Exception) -> int:
    """The HTTP status a refusal is answered with (the gateway's error handlers use the same)."""
    if isinstance(exc, NotYourProject | federation.Forbidden):
        return 403
    if isinstance(exc, IdempotencyConflict):
        return 409
    return 400


@contextmanager
def refusals_audited(
    db: Database, actor: Actor, facts: Callable[[], BagFacts | None] = lambda: None
) -> Iterator[None]:
    """Audit any refusal raised inside, in its own transaction (the refused work's rolled back), and
    let it go on to be answered."""
    try:
        yield
    except REFUSALS as exc:
        with db.write() as session:
            record_crate_refusal(session, actor.name, str(exc), refusal_status(exc), facts())
        raise
