"""Safe Outputs, the human part: output checkers of this TRE decide on each held file, under the TRE's
review policy, and the decisions settle what is released.

Rules of the road: the person who submitted the task can never approve its outputs; with two-person
review, two different checkers must approve (people are their token's issuer and subject, never the
name it shows); any rejection withholds the file; a rejection, and an approval that overrides a
failed automated check, must say why. A file marked never to be released, or whose checks could not
run, is withheld whatever anyone decides (`releasable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from fivesafes_tes import audit
from fivesafes_tes.agent.tables import HeldFileRecord, LocalChild, ReviewDecision
from fivesafes_tes.auth.principal import Person, name_key
from fivesafes_tes.db.base import utcnow
from fivesafes_tes.submission.stages import Stage

# In a child's result once its release has begun: its approvals go to the gateway, which keeps them
# as they were first sent, so no decision may change after that.
RELEASING = "releasing"


class ReviewPolicy(BaseModel):
    """Per TRE, in the policy file's `review:` section."""

    required_approvals: int = Field(
        default=1, ge=1, le=5, description="Distinct checkers who must approve a file."
    )
    auto_release: bool = Field(default=False, description="Release without a person when every rule passes.")


class ReviewRefused(Exception):
    """The decision cannot be taken; the message says why in the checker's terms."""


class ReviewForbidden(ReviewRefused):
    """This person may not review this child's outputs at all (they submitted the task)."""


class NeverReleasable(ReviewRefused):
    """The file can never be approved by anyone (`releasable` says why)."""


def refusal_status(exc: Exception) -> int | None:
    """The HTTP status a refused decision answers with, the same for the API and the pages: no such
    child or file 404, not this checker's to make 403, a file never to be released 409, else 400;
    None for an exception that is not a refusal."""
    if isinstance(exc, LookupError):
        return 404
    if isinstance(exc, ReviewForbidden):
        return 403
    if isinstance(exc, NeverReleasable):
        return 409
    if isinstance(exc, ReviewRefused):
        return 400
    return None


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
    checker: Person,
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
    if child.stage != Stage.AWAITING_REVIEW:
        raise ReviewRefused(f"child {child_id} is {child.stage}, not awaiting review")
    if (child.result or {}).get(RELEASING):
        raise ReviewRefused(f"the release of child {child_id} has begun: its decisions are final")
    if _is_submitter(child, checker):
        raise ReviewForbidden(f"{checker.name} submitted this task and cannot review its outputs")
    if decision == "rejected" and not reason.strip():
        raise ReviewRefused("say why: the researcher reads the reason for a rejection")
    if decision == "approved":
        never = releasable(held)
        if never is not None:
            raise NeverReleasable(f"{held.name} can never be released: {never}; reject it instead")
        if held.verdict == "fail" and not reason.strip():
            raise ReviewRefused(f"{held.name} failed an automated check: approving it needs a reason")
    row = session.get(ReviewDecision, (child_id, key, checker.issuer, checker.subject))
    if row is None:
        row = ReviewDecision(
            child_id=child_id, key=key, checker_issuer=checker.issuer, checker_subject=checker.subject
        )
        session.add(row)
    row.checker, row.decision, row.reason, row.decided_at = checker.name, decision, reason, utcnow()
    audit.record(
        session,
        actor=checker.name,
        action="review.decision",
        object=f"child:{child_id}/{held.name}",
        outcome=decision,
        detail={
            "reason": reason,
            "sha256": held.sha256,
            "issuer": checker.issuer,
            "subject": checker.subject,
        },
    )
    return row


def releasable(held: HeldFileRecord) -> str | None:
    """Why this held file can never be approved, in the checker's terms; None if it may be.

    Decided from the rules' results as data: a check that could not run (it crashed, timed out or
    answered nonsense), or a finding that marks the file never to be released."""
    broken = [r["rule"] for r in held.results if r.get("error")]
    if broken:
        return (
            f"the automated check(s) {', '.join(broken)} could not run on it, and nothing leaves "
            "unchecked (the task must run again once the TRE's admins have fixed the checks)"
        )
    marked = [
        f"{r['rule']}: {f['message']}"
        for r in held.results
        for f in r.get("findings", [])
        if f.get("never_release")
    ]
    if marked:
        return f"it is marked never to be released ({'; '.join(marked)})"
    return None


def _is_submitter(child: LocalChild, checker: Person) -> bool:
    """The submitter is matched by subject. Where the TRE's issuer is not the federation's the subjects
    cannot be compared, so a checker showing the submitter's name (casefolded) is refused as well."""
    if child.submitter_subject and checker.key == (child.submitter_issuer, child.submitter_subject):
        return True
    return name_key(checker.name) == name_key(child.username)


def settle(session: Session, child_id: str, policy: ReviewPolicy) -> Settled | None:
    """The child's outcome once every held file is decided; None while any is still open. A file
    that can never be released is withheld at once, whatever was decided on it."""
    held = list(session.scalars(select(HeldFileRecord).where(HeldFileRecord.child_id == child_id)))
    decisions = list(session.scalars(select(ReviewDecision).where(ReviewDecision.child_id == child_id)))
    files: dict[str, FileOutcome] = {}
    for record in held:
        mine = [d for d in decisions if d.key == record.key]
        if releasable(record) is not None or any(d.decision == "rejected" for d in mine):
            files[record.key] = FileOutcome.REJECTED
        elif len(
            {(d.checker_issuer, d.checker_subject) for d in mine if d.decision == "approved"}
        ) >= policy.required_approvals or (policy.auto_release and all(r.verdict == "pass" for r in held)):
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


def disclosure_record(
    session: Session, child: LocalChild, tre: str, settled: Settled, policy: ReviewPolicy
) -> dict[str, Any]:
    """The machine-readable account of one release (RELIABILITY 25): every held file with its SHA-256,
    each rule's version and findings, who decided what and why, and what was released. It is kept
    inside the TRE; `exported` is the part that leaves."""
    held = list(
        session.scalars(
            select(HeldFileRecord)
            .where(HeldFileRecord.child_id == child.child_id)
            .order_by(HeldFileRecord.key)
        )
    )
    decisions = list(
        session.scalars(
            select(ReviewDecision)
            .where(ReviewDecision.child_id == child.child_id)
            .order_by(ReviewDecision.decided_at)
        )
    )
    return {
        "profile": "fivesafes-tes/disclosure/1",
        "tre": tre,
        "task_id": child.task_id,
        "child_id": child.child_id,
        "attempt": child.attempt,
        "project": child.project,
        "submitter": child.username,
        "outcome": settled.outcome.value,
        "settled_at": utcnow().isoformat(),
        "policy": policy.model_dump(),
        "files": [
            {
                "name": h.name,
                "kind": h.kind,
                "size": h.size,
                "sha256": h.sha256,
                "checks": {"verdict": h.verdict, "rules": h.results},
                "decision": settled.files[h.key].value,
                "decisions": [
                    {
                        "checker": d.checker,
                        "decision": d.decision,
                        "reason": d.reason,
                        "at": d.decided_at.isoformat(),
                    }
                    for d in decisions
                    if d.key == h.key
                ],
            }
            for h in held
        ],
    }


def exported(record: dict[str, Any]) -> dict[str, Any]:
    """What of a disclosure record leaves the TRE with the child's ending: the review policy and the
    released files (each rule's name, version and verdict, the decisions and their reasons), plus the
    distinct reasons given for withholding. No finding text (it can quote other, unreleased files) and
    nothing of an unreleased file, not even how many there were: the gateway is outside the TRE."""
    released = [f for f in record["files"] if f["decision"] == FileOutcome.APPROVED.value]
    return {
        "profile": "fivesafes-tes/disclosure-export/1",
        "tre": record["tre"],
        "task_id": record["task_id"],
        "child_id": record["child_id"],
        "outcome": record["outcome"],
        "policy": record["policy"],
        "files": [
            {
                "name": f["name"],
                "kind": f["kind"],
                "size": f["size"],
                "sha256": f["sha256"],
                "checks": {
                    "verdict": f["checks"]["verdict"],
                    "rules": [
                        {"rule": r["rule"], "version": r["version"], "verdict": r["verdict"]}
                        for r in f["checks"]["rules"]
                    ],
                },
                "decision": f["decision"],
                "decisions": f["decisions"],
            }
            for f in released
        ],
        "withheld_reasons": sorted(
            {
                d["reason"]
                for f in record["files"]
                if f["decision"] == FileOutcome.REJECTED.value
                for d in f["decisions"]
                if d["decision"] == "rejected" and d["reason"].strip()
            }
        ),
    }


def kept_record(session: Session, child_id: str) -> dict[str, Any]:
    """The full disclosure record of a settled child, as kept inside the TRE."""
    child = session.get(LocalChild, child_id)
    if child is None:
        raise LookupError(f"no child {child_id} in this TRE")
    record: dict[str, Any] | None = (child.result or {}).get("disclosure")
    if record is None:
        raise LookupError(f"child {child_id} is {child.stage}: it has no disclosure record yet")
    return record


@dataclass
class StepView:
    exit_code: int | None
    start_time: str | None
    end_time: str | None


@dataclass
class FileView:
    """A held file as its checkers see it, beside what the rules found and who decided what."""

    key: str  # where the airlock holds it
    name: str
    kind: str
    size: int
    sha256: str
    verdict: str
    never_releasable: str | None  # why no one may approve it, or None
    findings: list[str]
    decisions: list[tuple[str, str, str]]  # checker, decision, reason


@dataclass
class ChildView:
    child_id: str
    task_id: str
    project: str
    submitter: str
    files: list[FileView]
    # How the run went, which the researcher sees only with a release: the checker sees it first.
    outcome: str | None
    outcome_message: str
    steps: list[StepView]


def pending(session: Session) -> list[ChildView]:
    """Every child waiting for an output checker, oldest first."""
    children = session.scalars(
        select(LocalChild)
        .where(LocalChild.stage == Stage.AWAITING_REVIEW.value, LocalChild.active)
        .order_by(LocalChild.created_at)
    )
    return [describe(session, c.child_id) for c in children]


@dataclass(frozen=True)
class QueueEntry:
    """A child in the checkers' queue: whose, since when, and how much of it the rules flagged."""

    child_id: str
    task_id: str
    project: str
    submitter: str
    received: datetime
    files: int
    flagged: int  # held files whose rules did not all pass


@dataclass(frozen=True)
class Queue:
    entries: list[QueueEntry]
    total: int  # children waiting that match the filter, on every page
    projects: list[str]  # projects with children waiting, to filter by


def queue(
    session: Session,
    *,
    project: str | None = None,
    flagged: bool | None = None,
    offset: int = 0,
    limit: int = 50,
) -> Queue:
    """One page of the children waiting for an output checker, oldest first, optionally of one project,
    and only those where the rules flagged a file (`flagged` True) or flagged none (False).

    The page is one query on the (stage, created_at) index, counting each listed child's held files on
    their primary key, whatever the queue's length; the total and the projects are one query each."""
    waiting = [LocalChild.stage == Stage.AWAITING_REVIEW.value, LocalChild.active.is_(True)]
    if project:
        waiting.append(LocalChild.project == project)
    held = HeldFileRecord.child_id == LocalChild.child_id  # per child of the page, on the primary key
    if flagged is not None:
        any_flagged = select(HeldFileRecord.key).where(held, HeldFileRecord.verdict != "pass").exists()
        waiting.append(any_flagged if flagged else ~any_flagged)
    files = select(func.count()).where(held).correlate(LocalChild).scalar_subquery()
    flagged_files = (
        select(func.count())
        .where(held, HeldFileRecord.verdict != "pass")
        .correlate(LocalChild)
        .scalar_subquery()
    )
    page = session.execute(
        select(
            LocalChild.child_id,
            LocalChild.task_id,
            LocalChild.project,
            LocalChild.username,
            LocalChild.created_at,
            files,
            flagged_files,
        )
        .where(*waiting)
        .order_by(LocalChild.created_at, LocalChild.child_id)
        .offset(offset)
        .limit(limit)
    )
    entries = [QueueEntry(*row) for row in page]
    total = session.scalar(select(func.count()).select_from(LocalChild).where(*waiting)) or 0
    projects = session.scalars(
        select(LocalChild.project)
        .where(LocalChild.stage == Stage.AWAITING_REVIEW.value, LocalChild.active.is_(True))
        .distinct()
        .order_by(LocalChild.project)
    )
    return Queue(entries, total, list(projects))


@dataclass(frozen=True)
class PastDecision:
    """One checker's decision on one held file, as the history lists it."""

    decided_at: datetime
    child_id: str
    project: str
    file: str
    checker: str
    decision: str
    reason: str


def history(
    session: Session, *, search: str = "", offset: int = 0, limit: int = 50
) -> tuple[list[PastDecision], int]:
    """One page of the checkers' decisions, newest first, and how many there are: those whose child,
    project, file, checker or reason contains `search` (case-insensitively) when it is given."""
    joined = (
        select(
            ReviewDecision.decided_at,
            ReviewDecision.child_id,
            LocalChild.project,
            HeldFileRecord.name,
            ReviewDecision.checker,
            ReviewDecision.decision,
            ReviewDecision.reason,
        )
        .join(LocalChild, LocalChild.child_id == ReviewDecision.child_id)
        .join(
            HeldFileRecord,
            (HeldFileRecord.child_id == ReviewDecision.child_id) & (HeldFileRecord.key == ReviewDecision.key),
        )
    )
    if search:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        joined = joined.where(
            or_(
                *(
                    column.ilike(pattern, escape="\\")
                    for column in (
                        ReviewDecision.child_id,
                        LocalChild.project,
                        HeldFileRecord.name,
                        ReviewDecision.checker,
                        ReviewDecision.reason,
                    )
                )
            )
        )
    total = session.scalar(select(func.count()).select_from(joined.subquery())) or 0
    rows = session.execute(
        joined.order_by(ReviewDecision.decided_at.desc(), ReviewDecision.child_id).offset(offset).limit(limit)
    )
    return [PastDecision(*row) for row in rows], total


def describe(session: Session, child_id: str) -> ChildView:
    child = session.get(LocalChild, child_id)
    if child is None:
        raise LookupError(f"no child {child_id} in this TRE")
    held = session.scalars(
        select(HeldFileRecord).where(HeldFileRecord.child_id == child_id).order_by(HeldFileRecord.key)
    )
    decisions = list(session.scalars(select(ReviewDecision).where(ReviewDecision.child_id == child_id)))
    run = (child.result or {}).get("outcome") or {}
    return ChildView(
        child_id=child.child_id,
        task_id=child.task_id,
        project=child.project,
        submitter=child.username,
        outcome=run.get("outcome"),
        outcome_message=run.get("message") or "",
        steps=[
            StepView(exit_code=s.get("exit_code"), start_time=s.get("start_time"), end_time=s.get("end_time"))
            for s in run.get("steps", [])
        ],
        files=[
            _file_view(h, [(d.checker, d.decision, d.reason) for d in decisions if d.key == h.key])
            for h in held
        ],
    )


def _file_view(record: HeldFileRecord, decisions: list[tuple[str, str, str]]) -> FileView:
    file = record.held
    return FileView(
        key=record.key,
        name=file.name,
        kind=file.kind,
        size=file.size,
        sha256=file.sha256,
        verdict=record.verdict,
        never_releasable=releasable(record),
        findings=_findings(record.results),
        decisions=decisions,
    )


def _findings(results: list[dict[str, Any]]) -> list[str]:
    """Every finding as one line, the most severe first (each message already names its rule)."""
    order = {"fail": 0, "review": 1, "pass": 2}
    found = [
        (f.get("verdict", "review"), f["message"] + _where(f)) for r in results for f in r.get("findings", [])
    ]
    found += [("fail", f"{r['rule']} could not run: {r['error']}") for r in results if r.get("error")]
    return [f"{verdict}: {message}" for verdict, message in sorted(found, key=lambda x: order.get(x[0], 1))]


def _where(finding: dict[str, Any]) -> str:
    parts = [
        f"{label} {finding[key]}"
        for key, label in (("column", "column"), ("row", "row"), ("threshold", "threshold"))
        if finding.get(key) is not None
    ]
    return f" ({', '.join(parts)})" if parts else ""


@dataclass(frozen=True)
class Command:
    """One step of the request as its checker reads it: the image and the command it ran."""

    image: str
    command: list[str]


def commands(session: Session, child_id: str) -> list[Command]:
    """What the child was asked to run, step by step."""
    child = session.get(LocalChild, child_id)
    if child is None:
        raise LookupError(f"no child {child_id} in this TRE")
    return [
        Command(str(e.get("image", "")), [str(part) for part in e.get("command") or []])
        for e in child.task.get("executors") or []
    ]


def rule_results(session: Session, child_id: str) -> dict[str, list[dict[str, Any]]]:
    """Each held file's rule results as the rules recorded them, by held key: where findings point."""
    rows = session.execute(
        select(HeldFileRecord.key, HeldFileRecord.results).where(HeldFileRecord.child_id == child_id)
    )
    return {row.key: row.results for row in rows}


def key_for(session: Session, child_id: str, name: str) -> str:
    """The held key of the file a checker names (its container path, or step-N.stdout)."""
    key = session.scalar(
        select(HeldFileRecord.key).where(HeldFileRecord.child_id == child_id, HeldFileRecord.name == name)
    )
    if key is None:
        raise LookupError(f"child {child_id} holds no file named {name!r}")
    return key


def preview(data: bytes, *, lines: int = 20, width: int = 200) -> str:
    """A safe look at a held file: the first lines of text, each cut short; nothing of binary files."""
    if b"\x00" in data[:8192]:
        return "(binary file: no preview)"
    text = data.decode("utf-8", errors="replace").splitlines()[:lines]
    return "\n".join(line if len(line) <= width else line[:width] + "…" for line in text)
