"""Safe Outputs, the human part: output checkers of this TRE decide on each held file, under the TRE's
review policy, and the decisions settle what is released.

Rules of the road: the person who submitted the task can never approve its outputs; with two-person
review, two different checkers must approve; any rejection withholds the file; a rejection, and an
approval that overrides a failed automated check, must say why.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from fivesafes_tes import audit
from fivesafes_tes.agent.tables import HeldFileRecord, LocalChild, ReviewDecision
from fivesafes_tes.db.base import utcnow


class ReviewPolicy(BaseModel):
    """Per TRE, in the policy file's `review:` section."""

    required_approvals: int = Field(default=1, ge=1, le=5, description="Distinct checkers who must approve a file.")
    auto_release: bool = Field(default=False, description="Release without a person when every rule passes.")


class ReviewRefused(Exception):
    """The decision cannot be taken; the message says why in the checker's terms."""


class FileOutcome(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"
    UNDECIDED = "undecided"


class ChildOutcome(StrEnum):
    RELEASED = "released"
    PARTIALLY_RELEASED = "partially_released"
    WITHHELD = "withheld"


@dataclass(frozen=True)
class Settled:
    outcome: ChildOutcome
    files: dict[str, FileOutcome]  # key -> approved | rejected


def decide(
    session: Session,
    child_id: str,
    key: str,
    checker: str,
    decision: str,
    *,
    reason: str = "",
) -> ReviewDecision:
    """Record `checker`'s decision on one held file (replacing their own earlier one) and audit it."""
    if decision not in ("approved", "rejected"):
        raise ReviewRefused("a decision is 'approved' or 'rejected'")
    child = session.get(LocalChild, child_id)
    held = session.get(HeldFileRecord, (child_id, key))
    if child is None or held is None:
        raise LookupError(f"no held file {key!r} for child {child_id}")
    if child.stage != "awaiting_review":
        raise ReviewRefused(f"child {child_id} is {child.stage}, not awaiting review")
    if checker == child.username:
        raise ReviewRefused(f"{checker} submitted this task and cannot review its outputs")
    if decision == "rejected" and not reason.strip():
        raise ReviewRefused("say why: the researcher reads the reason for a rejection")
    if decision == "approved" and held.verdict == "fail" and not reason.strip():
        raise ReviewRefused(f"{held.name} failed an automated check: approving it needs a reason")
    row = session.get(ReviewDecision, (child_id, key, checker))
    if row is None:
        row = ReviewDecision(child_id=child_id, key=key, checker=checker)
        session.add(row)
    row.decision, row.reason, row.decided_at = decision, reason, utcnow()
    audit.record(session, actor=checker, action="review.decision", object=f"child:{child_id}/{held.name}",
                 outcome=decision, detail={"reason": reason, "sha256": held.sha256})
    return row


def settle(session: Session, child_id: str, policy: ReviewPolicy) -> Settled | None:
    """The child's outcome once every held file is decided; None while any is still open."""
    held = list(session.scalars(select(HeldFileRecord).where(HeldFileRecord.child_id == child_id)))
    decisions = list(session.scalars(select(ReviewDecision).where(ReviewDecision.child_id == child_id)))
    files: dict[str, FileOutcome] = {}
    for record in held:
        mine = [d for d in decisions if d.key == record.key]
        if any(d.decision == "rejected" for d in mine):
            files[record.key] = FileOutcome.REJECTED
        elif len({d.checker for d in mine if d.decision == "approved"}) >= policy.required_approvals or policy.auto_release and all(r.verdict == "pass" for r in held):
            files[record.key] = FileOutcome.APPROVED
        else:
            return None
    approved = sum(o is FileOutcome.APPROVED for o in files.values())
    if held and approved == len(held):
        outcome = ChildOutcome.RELEASED
    elif approved:
        outcome = ChildOutcome.PARTIALLY_RELEASED
    else:
        outcome = ChildOutcome.WITHHELD
    return Settled(outcome, files)
