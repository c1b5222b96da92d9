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
    session: Session, actor: str, project: str, decision: str, *, username: str = "", reason: str = ""
) -> LocalDecision:
    """Record a TRE admin's decision (approved or rejected) and audit it; it is pushed to the gateway."""
    if decision not in ("approved", "rejected"):
        raise ValueError("a decision is 'approved' or 'rejected'")
    if decision == "rejected" and not reason.strip():
        raise ValueError("say why: a rejection needs a reason the researcher will read")
    if session.get(LocalProject, project) is None:
        raise LookupError(f"project {project!r} is not assigned to this TRE (or not synced yet)")
    row = session.get(LocalDecision, (project, username))
    if row is None:
        row = LocalDecision(project=project, username=username)
        session.add(row)
    row.decision, row.reason, row.decided_by, row.decided_at, row.pushed = (
        decision,
        reason,
        actor,
        utcnow(),
        False,
    )
    subject = f"project:{project}" + (f"/user:{username}" if username else "")
    audit.record(
        session,
        actor=actor,
        action="tre.decision",
        object=subject,
        outcome=decision,
        detail={"reason": reason},
    )
    return row


def clearance(session: Session, tre: str, project: str, username: str) -> Clearance:
    """May `username` run work of `project` here? Both the project and the person need approval."""
    project_decision = session.get(LocalDecision, (project, ""))
    user_decision = session.get(LocalDecision, (project, username))
    if project_decision and project_decision.decision == "rejected":
        return Clearance(Verdict.REJECTED, f"{tre} rejected project {project}: {project_decision.reason}")
    if user_decision and user_decision.decision == "rejected":
        return Clearance(
            Verdict.REJECTED, f"{tre} rejected {username} for project {project}: {user_decision.reason}"
        )
    missing = []
    if not (project_decision and project_decision.decision == "approved"):
        missing.append(f"project {project}")
    if not (user_decision and user_decision.decision == "approved"):
        missing.append(f"user {username}")
    if missing:
        return Clearance(Verdict.UNDECIDED, f"waiting for {tre}'s admins to approve {' and '.join(missing)}")
    return Clearance(Verdict.APPROVED, f"{tre} approved project {project} and user {username}")


def unpushed(session: Session) -> list[LocalDecision]:
    return list(session.scalars(select(LocalDecision).where(LocalDecision.pushed.is_(False))))
