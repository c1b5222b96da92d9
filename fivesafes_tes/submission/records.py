"""The facts a task's activity record is built from (`crates.record`), gathered only through what the
researcher view shows (`researcher_view.task_log`, `results_entry`, `disclosure`), the TREs' decisions
on the project and the submitter as their agents reported them, and the request crate intake kept.

Who may read them is decided as for the task itself (`tasks.visible_task`): another project's task
is "not found", and the refusal is audited by the route's handler as for every other task route.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fivesafes_tes.auth.principal import name_key
from fivesafes_tes.auth.tables import User
from fivesafes_tes.crates.profile import person_id
from fivesafes_tes.crates.record import (
    ReleasedFact,
    ReviewDecision,
    RuleVerdict,
    SignOffFact,
    TaskFacts,
    TreFacts,
)
from fivesafes_tes.db import Database
from fivesafes_tes.db.base import utcnow
from fivesafes_tes.egress.store import ObjectStore
from fivesafes_tes.submission import researcher_view, results
from fivesafes_tes.submission.researcher_view import rfc3339
from fivesafes_tes.submission.tables import Project, RequestCrate, TaskTag, Tre, TreDecision
from fivesafes_tes.submission.tasks import Actor, children_of, visible_task


def task_facts(session: Session, actor: Actor, task_id: str, *, now: datetime | None = None) -> TaskFacts:
    """Everything the activity record of `task_id` says, for `actor`; TaskNotFound if they may not
    see the task (as `get_task`)."""
    task = visible_task(session, actor, task_id)
    owner = session.get(User, task.owner_id)
    project = session.get(Project, task.project_id) if task.project_id is not None else None
    tags = {t.key: t.value for t in session.scalars(select(TaskTag).where(TaskTag.task_id == task_id))}
    children = children_of(session, [task_id]).get(task_id, [])
    released = results.released_files(session, [task_id]).get(task_id, [])
    names = [t for _, t in children]
    titles = dict(session.execute(select(Tre.name, Tre.title).where(Tre.name.in_(names))).tuples().all())
    username = owner.username if owner is not None else ""
    decisions = _decisions(session, task.project_id, [c.tre_id for c, _ in children], username)
    tres = []
    for child, tre in children:
        files = [f for f, _ in released if f.child_id == child.id]
        log = researcher_view.task_log(task, child, tre, files, results_url="")
        entry = researcher_view.results_entry(child, tre, files, results_url="")
        tres.append(
            _tre_facts(
                tre,
                titles.get(tre, ""),
                log,
                entry,
                (decisions.get((child.tre_id, ""), None), decisions.get((child.tre_id, name_key(username)))),
                project.name if project is not None else "",
                username,
            )
        )
    crate = session.get(RequestCrate, task_id)
    return TaskFacts(
        task_id=task.id,
        name=task.name,
        state=task.state,
        created_at=rfc3339(task.created_at),
        document={**task.document, "tags": tags},
        submitter=username,
        submitter_id=_person_iri(owner),
        project=project.name if project is not None else "",
        project_title=project.title if project is not None else "",
        generated_at=rfc3339(now or utcnow()),
        tres=tuple(tres),
        request=crate.facts() if crate is not None else None,
    )


def _person_iri(owner: User | None) -> str:
    """The submitter's @id, stable per (issuer, subject) and naming neither: the one request crates'
    agents are given at intake (`crates.profile.agent_id`)."""
    if owner is None:
        return f"#agent-{uuid.uuid5(uuid.NAMESPACE_URL, '')}"
    return person_id(owner.issuer, owner.subject)


def _decisions(
    session: Session, project_id: int | None, tre_ids: list[int], username: str
) -> dict[tuple[int, str], TreDecision]:
    """The TREs' decisions on the project ("") and on the submitter (their casefolded name)."""
    if project_id is None or not tre_ids:
        return {}
    rows = session.scalars(
        select(TreDecision).where(
            TreDecision.project_id == project_id,
            TreDecision.tre_id.in_(tre_ids),
            TreDecision.username.in_(["", name_key(username)]),
        )
    )
    return {(row.tre_id, row.username): row for row in rows}


def _sign_off(on: str, name: str, row: TreDecision | None) -> SignOffFact:
    if row is None:
        return SignOffFact(on=on, name=name, decision="")
    return SignOffFact(
        on=on,
        name=name,
        decision=row.decision,
        decided_by=row.decided_by,
        reason=row.reason,
        decided_at=rfc3339(row.decided_at),
    )


def _tre_facts(
    tre: str,
    title: str,
    log: dict[str, Any],
    entry: dict[str, Any],
    decided: tuple[TreDecision | None, TreDecision | None],
    project: str,
    username: str,
) -> TreFacts:
    """One TRE's part, from the researcher view's TaskLog and results entry of its child only."""
    disclosure = entry["disclosure"]
    by_name = {f["name"]: f for f in (disclosure or {}).get("files", [])}
    released = []
    for file in entry["files"]:
        described = by_name.get(file["name"], {})
        checks = described.get("checks") or {}
        released.append(
            ReleasedFact(
                tre=tre,
                file_id=file["id"],
                name=file["name"],
                kind=file["kind"],
                size=file["size"],
                sha256=file["sha256"],
                verdict=checks.get("verdict", ""),
                rules=tuple(
                    RuleVerdict(r["rule"], r["version"], r["verdict"]) for r in checks.get("rules", [])
                ),
                decisions=tuple(
                    ReviewDecision(d["checker"], d["decision"], d["reason"], d["at"])
                    for d in described.get("decisions", [])
                ),
            )
        )
    return TreFacts(
        name=tre,
        title=title,
        stage=log["metadata"]["stage"],
        started_at=log.get("start_time"),
        ended_at=log.get("end_time"),
        sign_offs=(_sign_off("project", project, decided[0]), _sign_off("person", username, decided[1])),
        reviewed=disclosure is not None,
        policy=tuple(sorted((k, str(v)) for k, v in (disclosure or {}).get("policy", {}).items())),
        released=tuple(released),
        withheld_reasons=tuple((disclosure or {}).get("withheld_reasons", [])),
    )


def open_released(db: Database, store: ObjectStore | None, actor: Actor, fact: ReleasedFact) -> IO[bytes]:
    """A released file's bytes for a results crate, as `results.download` hands them out: visible to
    `actor`, checked against the SHA-256 recorded at the TRE, audited. The temporary copy is gone
    from the file system once opened; it lives until the handle is closed."""
    released, path = results.download(db, store, actor, fact.file_id)
    if released.sha256 != fact.sha256:  # the row is the one the facts came from
        path.unlink(missing_ok=True)
        raise results.IntegrityAlert("a released file changed while the crate was being written")
    handle = open(path, "rb")  # noqa: SIM115 - the caller closes it
    path.unlink()
    return handle
