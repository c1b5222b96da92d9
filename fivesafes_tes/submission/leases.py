"""The agent protocol's domain side: leases with attempts, heartbeats, idempotent stage events,
cancellations, and what each TRE is told and tells back.

Delivery is at-least-once; effects are exactly-once through keys: a lease bumps `attempt`, an event
is keyed (child, attempt, seq), and a message from an older attempt is refused. Every function is
scoped to one TRE, so an agent can never touch another TRE's work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fivesafes_tes import audit
from fivesafes_tes.auth.principal import name_key
from fivesafes_tes.auth.tables import User
from fivesafes_tes.db.base import utcnow
from fivesafes_tes.submission import researcher_view
from fivesafes_tes.submission.federation import describe_projects
from fivesafes_tes.submission.stages import TASK_ACTS, Stage, can_move, derive_parent_state
from fivesafes_tes.submission.tables import (
    Child,
    ChildEvent,
    Membership,
    Project,
    ProjectTre,
    RequestCrate,
    Task,
    Tre,
    TreDecision,
)

# The outcomes of review: each needs its disclosure record, and released files must have arrived.
RELEASE_ENDINGS = frozenset({Stage.RELEASED, Stage.PARTIALLY_RELEASED, Stage.WITHHELD, Stage.EXECUTOR_FAILED})


class StaleAttempt(Exception):
    """The message belongs to an attempt that has been superseded; the agent must drop that work."""


class IllegalTransition(Exception):
    """The stage cannot follow the child's current one (e.g. the child has ended)."""


class UnknownChild(LookupError):
    """No such child in this TRE."""


@dataclass
class Grant:
    child_id: str
    task_id: str
    attempt: int
    stage: str
    lease_expires_at: datetime
    project: str
    user: str  # the name the submitter is a member of the project under: what the TRE's admins approve
    user_issuer: str  # with user_subject, who the submitter is: what the TRE compares
    user_subject: str
    task: dict[str, Any]
    created_at: str = ""  # when the task was submitted (RFC 3339)
    # The request crate as intake kept it (`crates.record.RequestFacts`, as JSON), for the TRE's own
    # activity record of the request; None for a bare TES task.
    request: dict[str, Any] | None = None


@dataclass
class Cancellation:
    child_id: str
    attempt: int


@dataclass
class EventResult:
    stage: str
    applied: bool  # False for a replay of an event already recorded


@dataclass
class Decision:
    project: str
    username: str  # "" for the project itself
    decision: str  # approved | rejected | pending
    reason: str = ""
    decided_by: str = ""
    decided_at: datetime = field(default_factory=utcnow)


_IN_PROGRESS = tuple(s.value for s in Stage if not s.is_final and s is not Stage.RECEIVED)


def _leasable(tre: Tre, now: datetime):  # type: ignore[no-untyped-def]
    """This TRE's new children, and its in-progress ones whose lease expired."""
    return and_(
        Child.tre_id == tre.id,
        or_(
            Child.stage == Stage.RECEIVED.value,
            Child.stage.in_(_IN_PROGRESS) & (Child.lease_expires_at < now),
        ),
    )


def work_waiting(session: Session, tre: Tre) -> bool:
    """Whether `lease` would hand anything out now: a read, so that an idle agent's long poll never
    opens a write transaction (on SQLite, one that queues behind and ahead of task creation)."""
    return session.scalar(select(Child.id).where(_leasable(tre, utcnow())).limit(1)) is not None


def lease(
    session: Session,
    tre: Tre,
    *,
    limit: int,
    ttl_s: int,
    max_lost_leases: int = 3,
    now: datetime | None = None,
) -> list[Grant]:
    """Hand this TRE's new and abandoned children to its agent, each with a fresh attempt number.

    New children (`received`) and in-progress children whose lease expired are eligible; one that
    lost its lease `max_lost_leases` times while its task acted is given up instead (`give_up`). Row
    locks with SKIP LOCKED mean two gateway replicas never lease the same child twice.
    """
    now = now or utcnow()
    give_up(session, tre, max_lost_leases=max_lost_leases, now=now)
    expires = now + timedelta(seconds=ttl_s)
    query = (
        select(Child)
        .where(_leasable(tre, now))
        .order_by(Child.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    children = list(session.scalars(query))
    if not children:
        return []
    # What each grant carries, for the whole batch in one query (not one per child).
    about = {
        row.id: row
        for row in session.execute(
            select(
                Task.id,
                Task.document,
                Task.created_at,
                Project.name.label("project"),
                User.username,
                User.issuer,
                User.subject,
                Membership.username.label("member"),
            )
            .join(Project, Project.id == Task.project_id)
            .join(User, User.id == Task.owner_id)
            .outerjoin(
                Membership,
                and_(Membership.project_id == Task.project_id, Membership.user_id == Task.owner_id),
            )
            .where(Task.id.in_({c.task_id for c in children}))
        )
    }
    crates = {
        row.task_id: row
        for row in session.scalars(
            select(RequestCrate).where(RequestCrate.task_id.in_({c.task_id for c in children}))
        )
    }
    grants = []
    for child in children:
        if child.stage in TASK_ACTS:
            child.lost_leases += 1
        child.attempt += 1
        child.lease_expires_at = expires
        if child.stage == Stage.RECEIVED.value:
            child.stage = Stage.LEASED.value  # received and leased both read QUEUED: the parent is unchanged
        task = about[child.task_id]
        audit.record(
            session,
            actor=f"agent:{tre.name}",
            action="child.lease",
            object=f"child:{child.id}",
            outcome="ok",
            detail={"attempt": child.attempt, "task": child.task_id},
        )
        grants.append(
            Grant(
                child_id=child.id,
                task_id=child.task_id,
                attempt=child.attempt,
                stage=child.stage,
                lease_expires_at=expires,
                project=task.project,
                user=task.member or name_key(task.username),
                user_issuer=task.issuer,
                user_subject=task.subject,
                task=dict(task.document),
                created_at=researcher_view.rfc3339(task.created_at),
                request=crates[child.task_id].facts().to_json() if child.task_id in crates else None,
            )
        )
    return grants


def give_up(session: Session, tre: Tre, *, max_lost_leases: int, now: datetime) -> list[str]:
    """End `system_failed` each child of this TRE that lost its lease `max_lost_leases` times while its
    task was staged, running or being checked: one whose task kills or stalls its agent every time is
    not offered for ever. An agent that was merely down costs leases too, so waits (approval, review)
    do not count. The researcher reads that stage's fixed line; the audit says why."""
    doomed = select(Child.task_id, Child.id).where(
        Child.tre_id == tre.id,
        Child.stage.in_(TASK_ACTS),
        Child.lease_expires_at < now,
        Child.lost_leases + 1 >= max_lost_leases,
    )
    ended = []
    for task_id, child_id in session.execute(doomed).all():
        # Parent first, then child: the order events and cancel lock in.
        task = session.scalars(select(Task).where(Task.id == task_id).with_for_update()).one()
        child = session.scalars(
            select(Child)
            .where(Child.id == child_id, Child.lease_expires_at < now, Child.stage.in_(TASK_ACTS))
            .with_for_update(skip_locked=True)
        ).first()
        if child is None:  # renewed, moved on or taken by another replica meanwhile
            continue
        current = child.stage
        child.lost_leases += 1
        child.stage, child.ended_at, child.lease_expires_at = Stage.SYSTEM_FAILED.value, now, None
        refresh_parent(session, task)
        audit.record(
            session,
            actor="gateway",
            action="child.give_up",
            object=f"child:{child.id}",
            outcome=Stage.SYSTEM_FAILED.value,
            detail={"from": current, "attempt": child.attempt, "lost_leases": child.lost_leases},
        )
        ended.append(child.id)
    return ended


def pending_cancellations(session: Session, tre: Tre) -> list[Cancellation]:
    """Children canceled at the gateway that this TRE's agent once leased and has not confirmed stopping."""
    rows = session.execute(
        select(Child.id, Child.attempt).where(
            Child.tre_id == tre.id,
            Child.stage == Stage.CANCELED.value,
            Child.attempt > 0,
            Child.cancel_acknowledged.is_(False),
        )
    )
    return [Cancellation(child_id=r.id, attempt=r.attempt) for r in rows]


def acknowledge_cancel(session: Session, tre: Tre, child_id: str) -> None:
    child = child_in_tre(session, tre, child_id)
    child.cancel_acknowledged = True


def heartbeat(
    session: Session, tre: Tre, items: list[tuple[str, int]], *, ttl_s: int, now: datetime | None = None
) -> dict[str, str]:
    """Extend the leases the agent still holds. Per child: ok, stale (a newer attempt exists),
    canceled, ended, or unknown."""
    now = now or utcnow()
    ids = [child_id for child_id, _ in items]
    children = {
        c.id: c for c in session.scalars(select(Child).where(Child.tre_id == tre.id, Child.id.in_(ids)))
    }
    answer = {}
    for child_id, attempt in items:
        child = children.get(child_id)
        if child is None:
            answer[child_id] = "unknown"
        elif child.stage == Stage.CANCELED.value:
            answer[child_id] = "canceled"
        elif Stage(child.stage).is_final:
            answer[child_id] = "ended"
        elif child.attempt != attempt:
            answer[child_id] = "stale"
        else:
            child.lease_expires_at = now + timedelta(seconds=ttl_s)
            answer[child_id] = "ok"
    return answer


def record_event(
    session: Session,
    tre: Tre,
    child_id: str,
    *,
    attempt: int,
    seq: int,
    stage: Stage,
    message: str | None = None,
    report: dict[str, Any] | None = None,
    ttl_s: int = 60,
    paused_for_review: bool = False,
) -> EventResult:
    """Apply one stage event from the agent, exactly once.

    The parent task's row is locked first, then the child's (the order cancel uses too), so events
    of sibling children take turns and each derives the parent's state from its siblings' latest
    stages: without the lock, under READ COMMITTED the last writer could store a stale state.
    """
    of_child = select(Child.task_id).where(Child.id == child_id, Child.tre_id == tre.id).scalar_subquery()
    task = session.scalars(select(Task).where(Task.id == of_child).with_for_update()).first()
    if task is None:
        raise UnknownChild(f"no child {child_id!r} in TRE {tre.name}")
    child = child_in_tre(session, tre, child_id, for_update=True)
    if session.get(ChildEvent, (child_id, attempt, seq)) is not None:
        return EventResult(stage=child.stage, applied=False)
    if attempt != child.attempt:
        raise StaleAttempt(f"attempt {attempt} of child {child_id} was superseded by attempt {child.attempt}")
    current = Stage(child.stage)
    if stage is not current and not can_move(current, stage):
        raise IllegalTransition(f"child {child_id} is {current.value}; it cannot move to {stage.value}")
    if stage in RELEASE_ENDINGS:
        from fivesafes_tes.submission.results import check_disclosure

        if not (report or {}).get("disclosure"):
            raise IllegalTransition(f"ending {stage.value} needs the disclosure record in the report")
        check_disclosure(session, child, report["disclosure"])  # type: ignore[index]
    try:
        with session.begin_nested():
            session.add(ChildEvent(child_id=child_id, attempt=attempt, seq=seq, stage=stage.value))
            session.flush()
    except IntegrityError:  # the same event, racing in from a retry
        return EventResult(stage=child.stage, applied=False)
    now = utcnow()
    message = researcher_view.kept_message(stage, message)
    if message:
        child.system_logs = [*child.system_logs, message]
    if report:
        child.report = {**child.report, **report}
    if stage is not current:
        child.stage = stage.value
        if stage is Stage.STAGING and child.started_at is None:
            child.started_at = now
        if stage.is_final:
            child.ended_at = now
            child.lease_expires_at = None
        else:
            child.lease_expires_at = now + timedelta(seconds=ttl_s)
        refresh_parent(session, task, paused_for_review=paused_for_review)
        audit.record(
            session,
            actor=f"agent:{tre.name}",
            action="child.stage",
            object=f"child:{child_id}",
            outcome=stage.value,
            detail={"from": current.value, "attempt": attempt, "seq": seq},
        )
    return EventResult(stage=child.stage, applied=True)


def refresh_parent(session: Session, task: Task, *, paused_for_review: bool = False) -> None:
    """Store the parent's derived state, so state filters stay one indexed SQL condition."""
    if task.state == "CANCELED":
        return
    stages = [Stage(s) for s in session.scalars(select(Child.stage).where(Child.task_id == task.id))]
    task.state = derive_parent_state(stages, paused_for_review=paused_for_review).value


def child_in_tre(session: Session, tre: Tre, child_id: str, *, for_update: bool = False) -> Child:
    query = select(Child).where(Child.id == child_id, Child.tre_id == tre.id)
    if for_update:  # and what was committed before the lock, even if the session saw the row earlier
        query = query.with_for_update().execution_options(populate_existing=True)
    child = session.scalar(query)
    if child is None:
        raise UnknownChild(f"no child {child_id!r} in TRE {tre.name}")
    return child


def sync(session: Session, tre: Tre) -> list[dict[str, Any]]:
    """The projects assigned to this TRE, with their dates and members: what its admins decide on."""
    names = list(
        session.scalars(
            select(Project.name)
            .join(ProjectTre, ProjectTre.project_id == Project.id)
            .where(ProjectTre.tre_id == tre.id)
        )
    )
    return [
        {
            "name": p.name,
            "title": p.title,
            "starts_on": p.starts_on and p.starts_on.isoformat(),
            "ends_on": p.ends_on and p.ends_on.isoformat(),
            "members": p.members,
        }
        for p in describe_projects(session, names)
    ]


def record_decisions(session: Session, tre: Tre, decisions: list[Decision]) -> int:
    """Store what this TRE's admins decided, for display at the gateway. Returns how many changed."""
    assigned = dict(
        session.execute(
            select(Project.name, Project.id)
            .join(ProjectTre, ProjectTre.project_id == Project.id)
            .where(ProjectTre.tre_id == tre.id)
        ).all()
    )
    changed = 0
    for d in decisions:
        project_id = assigned.get(d.project)
        if project_id is None:
            raise UnknownChild(f"project {d.project!r} is not assigned to TRE {tre.name}")
        row = session.get(TreDecision, (tre.id, project_id, d.username))
        if row is not None and (row.decision, row.reason, row.decided_by) == (
            d.decision,
            d.reason,
            d.decided_by,
        ):
            continue
        if row is None:
            row = TreDecision(tre_id=tre.id, project_id=project_id, username=d.username)
            session.add(row)
        row.decision, row.reason, row.decided_by, row.decided_at = (
            d.decision,
            d.reason,
            d.decided_by,
            d.decided_at,
        )
        changed += 1
        audit.record(
            session,
            actor=f"agent:{tre.name}",
            action="tre.decision",
            object=f"project:{d.project}" + (f"/user:{d.username}" if d.username else ""),
            outcome=d.decision,
            detail={"decided_by": d.decided_by},
        )
    return changed
