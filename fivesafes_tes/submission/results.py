"""Released files at the gateway: accepted from a TRE's agent with their SHA-256 checked, listed and
handed to the researchers of the task's project, and shown in the TES view once released."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fivesafes_tes import audit
from fivesafes_tes.submission.leases import IllegalTransition, child_in_tre
from fivesafes_tes.submission.stages import Stage
from fivesafes_tes.submission.tables import Child, ReleasedFile, Tre

KINDS = ("output", "stdout", "stderr")


class ReleaseConflict(Exception):
    """A TRE sent a file under a name already released with other content."""


@dataclass(frozen=True)
class Incoming:
    name: str
    kind: str
    step: int | None
    size: int
    sha256: str


def expect_upload(session: Session, tre: Tre, child_id: str) -> Child:
    """The child a TRE wants to release into: its own, and still waiting for review."""
    child = child_in_tre(session, tre, child_id)
    if child.stage != Stage.AWAITING_REVIEW.value:
        raise IllegalTransition(
            f"child {child_id} is {child.stage}; only outputs awaiting review are released"
        )
    return child


def accept(
    session: Session, tre: Tre, child: Child, incoming: Incoming, key: str
) -> tuple[ReleasedFile, bool]:
    """Record a verified, stored file; a repeat of the same file is a no-op (returns created=False)."""
    existing = session.scalar(
        select(ReleasedFile).where(ReleasedFile.child_id == child.id, ReleasedFile.name == incoming.name)
    )
    if existing is not None:
        if existing.sha256 != incoming.sha256:
            raise ReleaseConflict(f"{incoming.name} was already released with different content")
        return existing, False
    row = ReleasedFile(
        task_id=child.task_id,
        child_id=child.id,
        name=incoming.name,
        kind=incoming.kind,
        step=incoming.step,
        size=incoming.size,
        sha256=incoming.sha256,
        key=key,
    )
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
    """Before a child may end released: every file its disclosure record approves has arrived, intact."""
    stored = {
        f.name: f.sha256
        for f in session.scalars(select(ReleasedFile).where(ReleasedFile.child_id == child.id))
    }
    for entry in disclosure.get("files", []):
        if entry.get("decision") != "approved":
            continue
        if stored.get(entry.get("name")) != entry.get("sha256"):
            raise IllegalTransition(
                f"{entry.get('name')} is approved but has not arrived intact; upload it first"
            )


# A file is the researcher's only once its child has ended with a release; before that the TRE's
# agent may still be sending the others, or may stop (a changed file blocks the whole release).
VISIBLE_AFTER = (Stage.RELEASED.value, Stage.PARTIALLY_RELEASED.value, Stage.EXECUTOR_FAILED.value)


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


def destinations(
    task_document: dict[str, Any], released: list[ReleasedFile], buckets: set[str]
) -> dict[str, str]:
    """Where each released output goes besides the results store: name -> s3:// url, for outputs whose
    TES `url` names a bucket this gateway may write to. Wildcard outputs keep their path under
    `path_prefix`, appended to the output's url."""
    import fnmatch
    import posixpath

    out: dict[str, str] = {}
    for file in released:
        if file.kind != "output":
            continue
        for spec in task_document.get("outputs", []):
            url = spec.get("url", "")
            if not url.startswith("s3://") or url[5:].split("/", 1)[0] not in buckets:
                continue
            path = spec["path"]
            if any(c in path for c in "*?[") and fnmatch.fnmatchcase(file.name, path):
                prefix = spec.get("path_prefix") or posixpath.dirname(path)
                out[file.name] = url.rstrip("/") + "/" + posixpath.relpath(file.name, prefix)
                break
            if file.name == path or (
                spec.get("type") == "DIRECTORY" and file.name.startswith(path.rstrip("/") + "/")
            ):
                out[file.name] = (
                    url if file.name == path else url.rstrip("/") + file.name[len(path.rstrip("/")) :]
                )
                break
    return out
