"""Safe People, Safe Projects: this TRE's own decisions, made by its admins, applied by its agent.

The gateway's membership list says who *may* ask; only these decisions say who *may run* here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from fivesafes_tes import audit
from fivesafes_tes.agent.tables import LocalDecision, LocalProject
from fivesafes_tes.auth.principal import Person, name_key
from fivesafes_tes.db.base import utcnow


class Verdict(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class Clearance:
    verdict: Verdict
    message: str  # a plain-language system_logs line


def decide(
    session: Session, actor: Person, project: str, decision: str, *, username: str = "", reason: str = ""
) -> LocalDecision:
    """Record a TRE admin's decision (approved or rejected) and audit it; it is pushed to the gateway.

    `actor` is the admin as their token names them; `username` (casefolded) the member decided on."""
    if decision not in ("approved", "rejected"):
        raise ValueError("a decision is 'approved' or 'rejected'")
    if decision == "rejected" and not reason.strip():
        raise ValueError("say why: a rejection needs a reason the researcher will read")
    if session.get(LocalProject, project) is None:
        raise LookupError(f"project {project!r} is not assigned to this TRE (or not synced yet)")
    username = name_key(username)
    row = session.get(LocalDecision, (project, username))
    if row is None:
        row = LocalDecision(project=project, username=username)
        session.add(row)
    row.decision, row.reason, row.decided_by, row.decided_by_name, row.decided_at, row.pushed = (
        decision,
        reason,
        actor.qualified,
        actor.name,
        utcnow(),
        False,
    )
    subject = f"project:{project}" + (f"/user:{username}" if username else "")
    audit.record(
        session,
        actor=actor.name,
        action="tre.decision",
        object=subject,
        outcome=decision,
        detail={"reason": reason, "issuer": actor.issuer, "subject": actor.subject},
    )
    return row


def clearance(session: Session, tre: str, project: str, person: Person) -> Clearance:
    """May `person` run work of `project` here? Both the project and the person need approval.

    A decision on a person names them by member name (casefolded). A rejection applies to whoever
    uses that name; an approval only to the subject it was bound to when it first applied (`bind`)."""
    project_decision = session.get(LocalDecision, (project, ""))
    user_decision = session.get(LocalDecision, (project, name_key(person.name)))
    who = person.name
    if project_decision and project_decision.decision == "rejected":
        return Clearance(Verdict.REJECTED, f"{tre} rejected project {project}: {project_decision.reason}")
    if user_decision and user_decision.decision == "rejected":
        return Clearance(
            Verdict.REJECTED, f"{tre} rejected {who} for project {project}: {user_decision.reason}"
        )
    missing = []
    if not (project_decision and project_decision.decision == "approved"):
        missing.append(f"project {project}")
    if not (user_decision and user_decision.decision == "approved" and _bound_to(user_decision, person)):
        missing.append(f"user {who}")
    if missing:
        return Clearance(Verdict.UNDECIDED, f"waiting for {tre}'s admins to approve {' and '.join(missing)}")
    return Clearance(Verdict.APPROVED, f"{tre} approved project {project} and user {who}")


def _bound_to(row: LocalDecision, person: Person) -> bool:
    return row.person_subject is None or (row.person_issuer, row.person_subject) == person.key


def bind(session: Session, project: str, person: Person) -> None:
    """Tie the approval of `person`'s member name to their subject, once it has let them run work, so
    that someone else presenting that name later is not approved by it."""
    row = session.get(LocalDecision, (project, name_key(person.name)))
    if row is not None and row.person_subject is None and person.subject:
        row.person_issuer, row.person_subject = person.issuer, person.subject


def unpushed(session: Session) -> list[LocalDecision]:
    return list(session.scalars(select(LocalDecision).where(LocalDecision.pushed.is_(False))))


@dataclass(frozen=True)
class Standing:
    """One project as its TRE's admins see it: their decision on it and on each member (None: undecided)."""

    name: str
    title: str
    starts_on: str | None
    ends_on: str | None
    decision: LocalDecision | None
    members: list[tuple[str, LocalDecision | None]]

    @property
    def awaiting(self) -> bool:
        """Whether anything of it still waits for a decision."""
        return self.decision is None or any(d is None for _, d in self.members)


def standings(session: Session) -> list[Standing]:
    """Every project assigned to this TRE with the decisions on it, by name: two queries in all."""
    decisions = {(d.project, d.username): d for d in session.scalars(select(LocalDecision))}
    return [
        Standing(
            name=p.name,
            title=p.title,
            starts_on=p.starts_on,
            ends_on=p.ends_on,
            decision=decisions.get((p.name, "")),
            members=[(m, decisions.get((p.name, name_key(m)))) for m in p.members],
        )
        for p in session.scalars(select(LocalProject).order_by(LocalProject.name))
    ]
