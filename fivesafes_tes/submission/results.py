"""Released files at the gateway: accepted from a TRE's agent with their SHA-256 checked, listed and
handed to the researchers of the task's project, and shown in the TES view once released.

The gateway stores exactly the approved set (RELIABILITY 33): before uploading, the agent records the
child's approvals (name, kind, step, size, SHA-256), once and unchangeably; an upload outside them is
refused before a byte is stored, and audited; the final event's disclosure record must approve
exactly those files, all arrived intact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fivesafes_tes import audit
from fivesafes_tes.db.base import utcnow
from fivesafes_tes.egress.held import HeldFile
from fivesafes_tes.submission import file_outputs
from fivesafes_tes.submission.leases import IllegalTransition, child_in_tre
from fivesafes_tes.submission.researcher_view import VISIBLE_AFTER
from fivesafes_tes.submission.stages import Stage
from fivesafes_tes.submission.tables import ApprovedFile, Child, ReleasedFile, Task, Tre
from fivesafes_tes.tes import outputs

KINDS = ("output", "stdout", "stderr")


class ReleaseConflict(Exception):
    """A TRE sent a file under a name already released with other content."""


class InvalidRelease(ValueError):
    """Approvals that cannot be recorded as sent (the message says why)."""


class NotApproved(Exception):
    """An upload that is not among the child's recorded approvals: refused before a byte is stored."""


class ApprovalsConflict(Exception):
    """Approvals were recorded for this child already, and they were other files."""


def key_part(file: HeldFile) -> str:
    """What the file adds to its key in the results store: an output's container path without its
    leading `/`, a log's `step-N.stdout|stderr`."""
    return file.name.removeprefix("/")


def _approval(row: ApprovedFile) -> HeldFile:
    return HeldFile.from_description(row.name, row.kind, row.step, row.size, row.sha256)


def approvals_of(session: Session, child_id: str) -> list[HeldFile]:
    """The files recorded as approved for a child, by name."""
    query = select(ApprovedFile).where(ApprovedFile.child_id == child_id).order_by(ApprovedFile.name)
    return [_approval(row) for row in session.scalars(query)]


def record_approvals(session: Session, tre: Tre, child_id: str, files: list[HeldFile]) -> bool:
    """Record what the TRE's checkers approved for one of its children awaiting review, before any of
    it is uploaded; audited once. The same list again changes nothing (False: an agent repeating
    itself after a restart); another list is refused: approvals never change once recorded."""
    child = child_in_tre(session, tre, child_id, for_update=True)  # two recordings take turns
    wanted = set(files)
    if len({f.name for f in wanted}) != len(files):
        raise InvalidRelease("the approvals name a file twice")
    recorded = set(approvals_of(session, child.id))
    if recorded:
        if recorded == wanted:
            return False
        raise ApprovalsConflict(
            f"other approvals were recorded for child {child_id} already; once recorded they never change"
        )
    if child.stage != Stage.AWAITING_REVIEW.value:
        raise IllegalTransition(
            f"child {child_id} is {child.stage}; only outputs awaiting review are approved"
        )
    ordered = sorted(wanted, key=lambda f: f.name)
    for file in ordered:
        session.add(ApprovedFile(child_id=child.id, **file.described()))
    audit.record(
        session,
        actor=f"agent:{tre.name}",
        action="release.approvals",
        object=f"child:{child.id}",
        outcome="recorded",
        detail={"files": [{"name": f.name, "sha256": f.sha256} for f in ordered]},
    )
    return True


def expect_upload(session: Session, tre: Tre, child_id: str, incoming: HeldFile) -> Child:
    """The child a TRE wants to release `incoming` into: its own, still waiting for review, and
    having recorded `incoming` (name, kind, step, size and SHA-256) among its approvals."""
    child = child_in_tre(session, tre, child_id)
    if child.stage != Stage.AWAITING_REVIEW.value:
        raise IllegalTransition(
            f"child {child_id} is {child.stage}; only outputs awaiting review are released"
        )
    approved = session.get(ApprovedFile, (child.id, incoming.name))
    if approved is not None and _approval(approved) == incoming:
        return child
    if not approvals_of(session, child.id):
        raise NotApproved(
            f"no approvals were recorded for child {child_id}: record them (PUT .../approvals) before uploading"
        )
    raise NotApproved(
        f"{incoming.name} with SHA-256 {incoming.sha256} is not among the files approved for child {child_id}"
    )


def refuse_upload(session: Session, tre: Tre, child_id: str, incoming: HeldFile, why: NotApproved) -> None:
    """Audit an upload refused for not being approved: a TRE sending what no checker approved is
    a security event."""
    audit.record(
        session,
        actor=f"agent:{tre.name}",
        action="release.refused",
        object=f"child:{child_id}",
        outcome="refused",
        detail={"name": incoming.name, "sha256": incoming.sha256, "reason": str(why)},
    )


def accept(
    session: Session, tre: Tre, child: Child, incoming: HeldFile, key: str
) -> tuple[ReleasedFile, bool]:
    """Record a verified, stored file; a repeat of the same file is a no-op (returns created=False)."""
    existing = session.scalar(
        select(ReleasedFile).where(ReleasedFile.child_id == child.id, ReleasedFile.name == incoming.name)
    )
    if existing is not None:
        if existing.sha256 != incoming.sha256:
            raise ReleaseConflict(f"{incoming.name} was already released with different content")
        return existing, False
    row = ReleasedFile.of(incoming, child.task_id, child.id, key)
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=f"agent:{tre.name}",
        action="release.file",
        object=f"child:{child.id}",
        outcome="stored",
        detail={"name": incoming.name, "sha256": incoming.sha256, "size": incoming.size},
    )
    return row, True


def check_disclosure(session: Session, child: Child, disclosure: dict[str, Any]) -> None:
    """Before a child may end: its disclosure record approves exactly the recorded approvals, and
    every one of them has arrived, intact."""
    approved = {
        (entry.get("name"), entry.get("sha256"))
        for entry in disclosure.get("files", [])
        if entry.get("decision") == "approved"
    }
    recorded = {(f.name, f.sha256) for f in approvals_of(session, child.id)}
    if approved != recorded:
        raise IllegalTransition(
            f"the disclosure record approves other files than the {len(recorded)} recorded as approved for "
            f"child {child.id}; they must be the same"
        )
    missing = sorted(recorded - {(f.name, f.sha256) for f in released_of(session, child.id)})
    if missing:
        raise IllegalTransition(f"{missing[0][0]} is approved but has not arrived intact; upload it first")


def released_files(session: Session, task_ids: list[str]) -> dict[str, list[tuple[ReleasedFile, str]]]:
    """Released files per task, each with its TRE's name: only of children that ended with a release."""
    out: dict[str, list[tuple[ReleasedFile, str]]] = {}
    if not task_ids:
        return out
    rows = session.execute(
        select(ReleasedFile, Tre.name)
        .join(Child, Child.id == ReleasedFile.child_id)
        .join(Tre, Tre.id == Child.tre_id)
        .where(ReleasedFile.task_id.in_(task_ids), Child.stage.in_(VISIBLE_AFTER))
        .order_by(Tre.name, ReleasedFile.id)
    )
    for released, tre in rows:
        out.setdefault(released.task_id, []).append((released, tre))
    return out


@dataclass(frozen=True)
class Destinations:
    """Where this gateway delivers released outputs besides its results store: s3:// urls naming one
    of `buckets` (on the results store's endpoint) and file:// urls, under `folder` only."""

    buckets: frozenset[str] = frozenset()
    folder: str | None = None

    def __bool__(self) -> bool:
        return bool(self.buckets) or self.folder is not None

    def accepts(self, url: str) -> bool:
        if url.startswith("s3://"):
            return url[5:].split("/", 1)[0] in self.buckets
        return self.folder is not None and file_outputs.is_file_url(url)


def destinations(
    task_document: dict[str, Any], released: list[ReleasedFile], where: Destinations
) -> dict[str, str]:
    """Where each released output goes besides the results store: name -> url, for outputs whose TES
    `url` is one this gateway delivers to, by the rules that collected it (`tes.outputs.claim`): a
    wildcard's file keeps its path below `path_prefix`, a DIRECTORY's its path below it, appended to
    the output's url."""
    out: dict[str, str] = {}
    for file in released:
        if file.kind != "output":
            continue
        for spec in task_document.get("outputs", []):
            url = spec.get("url", "")
            below = outputs.claim(spec, file.name) if where.accepts(url) else None
            if below is not None:
                out[file.name] = url.rstrip("/") + "/" + below if below else url
                break
    return out


def released_of(session: Session, child_id: str) -> list[ReleasedFile]:
    """A child's released files, in the order they arrived."""
    query = select(ReleasedFile).where(ReleasedFile.child_id == child_id).order_by(ReleasedFile.id)
    return list(session.scalars(query))


# Deliveries: released outputs copied where their TES output urls say ------------------------------


class NothingGivenUp(LookupError):
    """No delivery of this task was given up: nothing to try again."""


def delivery_targets(session: Session, child: Child, where: Destinations) -> list[tuple[ReleasedFile, str]]:
    """The child's released outputs whose TES url is one `where` delivers to, each with that url; none
    unless the child's files are the researcher's (VISIBLE_AFTER)."""
    if not where or child.stage not in VISIBLE_AFTER:
        return []
    task = session.get(Task, child.task_id)
    files = released_of(session, child.id)
    urls = destinations(task.document, files, where)
    return [(file, urls[file.name]) for file in files if file.name in urls]


def owe_delivery(session: Session, child: Child, where: Destinations) -> bool:
    """In the transaction that releases `child`'s files: owe a delivery if some target is not yet
    delivered there, unless one is owed or was given up already (so a repeated final event changes
    nothing). Returns whether one is owed now."""
    if child.delivery_due_at is not None or child.delivery_attempts:
        return child.delivery_due_at is not None
    if not any(file.delivered_url != url for file, url in delivery_targets(session, child, where)):
        return False
    child.delivery_due_at = utcnow()
    return True


def redeliver(session: Session, actor: str, task_id: str) -> list[str]:
    """A federation admin's new start for the deliveries of `task_id` that were given up (the
    destination is fixed now): owed again at once with a fresh count of attempts, never over a claim
    just taken; audited. Returns the children owed again."""
    given_up = list(
        session.scalars(
            update(Child)
            .where(Child.task_id == task_id, Child.delivery_due_at.is_(None), Child.delivery_attempts > 0)
            .values(delivery_due_at=utcnow(), delivery_attempts=0)
            .returning(Child.id)
            .execution_options(synchronize_session=False)
        )
    )
    if not given_up:
        raise NothingGivenUp(
            "no delivery of this task was given up: nothing to try again (one under way is retried by itself)"
        )
    for child_id in given_up:
        audit.record(
            session,
            actor=actor,
            action="admin.redeliver",
            object=f"child:{child_id}",
            outcome="ok",
            detail={"task_id": task_id},
        )
    return given_up


def deliveries_due(session: Session, limit: int) -> list[str]:
    """Children whose delivery is due now, oldest first."""
    query = (
        select(Child.id)
        .where(Child.delivery_due_at.is_not(None), Child.delivery_due_at <= utcnow())
        .order_by(Child.delivery_due_at)
        .limit(limit)
    )
    return list(session.scalars(query))
