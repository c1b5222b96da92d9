"""Released files at the gateway: accepted from a TRE's agent with their SHA-256 checked and kept in
the results store (`expect`, then `keep`), listed and handed to the researchers of the task's project
(`download`), and shown in the TES view once released. Routes only parse, call these and render.

The gateway stores exactly the approved set (RELIABILITY 33): before uploading, the agent records the
child's approvals (name, kind, step, size, SHA-256), once and unchangeably; an upload outside them is
refused before a byte is stored, and audited; the final event's disclosure record must approve
exactly those files, all arrived intact.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sqlalchemy import select
from sqlalchemy.orm import Session

from fivesafes_tes import audit, failpoints
from fivesafes_tes.db import Database
from fivesafes_tes.egress.held import HeldFile, InvalidHeldName
from fivesafes_tes.egress.keys import UnsafeKey, released_key, safe_key
from fivesafes_tes.egress.store import ChecksumMismatch, ObjectExists, ObjectStore
from fivesafes_tes.submission.leases import IllegalTransition, child_in_tre
from fivesafes_tes.submission.researcher_view import VISIBLE_AFTER
from fivesafes_tes.submission.stages import Stage
from fivesafes_tes.submission.tables import ApprovedFile, Child, ReleasedFile, Tre
from fivesafes_tes.submission.tasks import Actor, TaskNotFound, visible_task

log = logging.getLogger(__name__)

KINDS = ("output", "stdout", "stderr")


class ReleaseConflict(Exception):
    """A TRE sent a file under a name already released with other content."""


class InvalidRelease(ValueError):
    """A released file's name does not fit its kind (the message says what it must be)."""


class NotApproved(Exception):
    """An upload that is not among the child's recorded approvals: refused before a byte is stored."""


class ApprovalsConflict(Exception):
    """Approvals were recorded for this child already, and they were other files."""


class Damaged(Exception):
    """An upload's bytes do not hash to the SHA-256 (or size) the TRE recorded: nothing was stored."""


class IntegrityAlert(Exception):
    """A released file in the results store no longer matches its SHA-256: it is not sent, and audited."""


class NoResultsStore(Exception):
    """This gateway has no results store configured, so it neither keeps nor hands out released files."""


def received(name: str, kind: str, step: int | None, size: int, sha256: str) -> HeldFile:
    """The file a TRE describes; InvalidRelease when name, kind and step do not agree."""
    try:
        return HeldFile.from_description(name, kind, step, size, sha256)
    except InvalidHeldName as exc:
        raise InvalidRelease(f"name: {exc}") from None


def stored_name(file: HeldFile) -> str:
    """The file's name as a part of its key in the results store; InvalidRelease saying what is wrong."""
    try:
        return safe_key(file.name.removeprefix("/"))  # an output's container path, a log's step-N.stream
    except UnsafeKey as exc:
        raise InvalidRelease(f"name: {exc}") from None


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
    for file in files:
        stored_name(file)
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
            f"no approvals were recorded for child {child_id}: "
            "record them (PUT .../approvals) before uploading"
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


@dataclass(frozen=True)
class Upload:
    """An upload the gateway expects: this file, for this child, kept under `key`."""

    child_id: str
    file: HeldFile
    key: str


class Spool:
    """An upload's bytes on local disk as they arrive, hashed on the way: never held in memory."""

    def __init__(self) -> None:
        self._file = tempfile.NamedTemporaryFile(prefix="release-")  # noqa: SIM115 - closed by __exit__
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._digest.update(chunk)
        self.size += len(chunk)
        self._file.write(chunk)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    @property
    def path(self) -> str:
        self._file.flush()
        return self._file.name

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._file.close()


def _present(store: ObjectStore | None) -> ObjectStore:
    if store is None:
        raise NoResultsStore("this gateway has no results store configured (FIVESAFES_RESULTS_*)")
    return store


def expect(db: Database, store: ObjectStore | None, tre: Tre, child_id: str, file: HeldFile) -> Upload:
    """Before a byte of an upload is read: the TRE's own child, awaiting review, recorded `file` among
    its approvals. A file outside them is refused (NotApproved) and audited."""
    _present(store)
    name = stored_name(file)
    with db.read() as session:
        try:
            task_id = expect_upload(session, tre, child_id, file).task_id
        except NotApproved as exc:
            refused = exc
        else:
            try:
                return Upload(child_id, file, released_key(task_id, tre.name, file.kind, name))
            except UnsafeKey as exc:
                raise InvalidRelease(f"name: {exc}") from None
    with db.write() as session:
        refuse_upload(session, tre, child_id, file, refused)
    raise refused


def keep(db: Database, store: ObjectStore | None, tre: Tre, upload: Upload, spool: Spool) -> bool:
    """Keep an expected upload whose bytes hash to what the TRE recorded: stored once (a repeat of the
    same bytes is a no-op, returning False), then recorded as released. Damaged bytes are refused
    and audited as an integrity alert; nothing is stored."""
    store = _present(store)
    file = upload.file
    if spool.sha256 != file.sha256 or spool.size != file.size:
        with db.write() as session:
            audit.record(
                session,
                actor=f"agent:{tre.name}",
                action="release.integrity",
                object=f"child:{upload.child_id}",
                outcome="alert",
                detail={"name": file.name, "expected": file.sha256, "received_bytes": spool.size},
            )
        raise Damaged(
            f"{file.name} arrived damaged: its SHA-256 or size differs from the TRE's record; "
            "nothing was stored"
        )
    try:
        store.put_file(upload.key, spool.path, sha256=file.sha256, if_absent=True)
        failpoints.reach("release.stored")
    except ObjectExists:
        held = store.head(upload.key)
        if held is None or held.sha256 != file.sha256:
            raise ReleaseConflict(f"{file.name} is already stored with other content") from None
    with db.write() as session:
        child = expect_upload(session, tre, upload.child_id, file)
        stored = accept(session, tre, child, file, upload.key)[1]
    failpoints.reach("release.recorded")
    return stored


def download(
    db: Database, store: ObjectStore | None, actor: Actor, file_id: int
) -> tuple[ReleasedFile, Path]:
    """Released file `file_id` for `actor`, in a temporary file the caller removes once sent: only a
    file of a child whose release the researcher may see, of a task of the actor's projects, and only
    if its bytes still hash to the SHA-256 recorded at the TRE. Audited either way."""
    with db.read() as session:
        released = session.get(ReleasedFile, file_id)
        try:
            child = session.get(Child, released.child_id) if released is not None else None
            if released is None or child is None or child.stage not in VISIBLE_AFTER:
                raise LookupError(file_id)
            visible_task(session, actor, released.task_id)
        except LookupError:
            raise TaskNotFound(
                str(file_id),
                actor=actor.name,
                exists=released is not None,
                object=f"released:{file_id}",
                message=f"no released file {file_id} visible to you",
            ) from None
    store = _present(store)
    handle, name = tempfile.mkstemp(prefix="download-")
    os.close(handle)  # get_to_file writes beside it and renames over it
    path = Path(name)
    try:
        store.get_to_file(released.key, path, expect_sha256=released.sha256)
    except BaseException as exc:
        path.unlink(missing_ok=True)
        if not isinstance(exc, ChecksumMismatch):
            raise
        with db.write() as session:
            audit.record(
                session,
                actor=actor.name,
                action="download",
                object=f"released:{file_id}",
                outcome="integrity_alert",
                detail={"name": released.name},
            )
        log.error("released file %s no longer matches its SHA-256; download refused", file_id)
        raise IntegrityAlert(
            "this file failed its integrity check and was not sent; the TRE has been alerted"
        ) from None
    with db.write() as session:
        audit.record(
            session,
            actor=actor.name,
            action="download",
            object=f"released:{file_id}",
            outcome="ok",
            detail={"name": released.name, "sha256": released.sha256},
        )
    return released, path


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


def released_of(session: Session, child_id: str) -> list[ReleasedFile]:
    """A child's released files, in the order they arrived."""
    query = select(ReleasedFile).where(ReleasedFile.child_id == child_id).order_by(ReleasedFile.id)
    return list(session.scalars(query))
