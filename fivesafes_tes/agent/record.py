"""The activity crate of a child's request, as its TRE sees it: a Five Safes RO-Crate (5s-crate 0.4,
built by `crates.record.activity_record`, the gateway's own builder) of the request (the request crate
as the gateway's intake kept it, handed over with the lease, or the bare TES task), the gateway's
checks of it, this TRE's sign-off of the project and the person as its admins decided here, the run
here, and the disclosure check in progress.

It is for the TRE's output checkers (the review page, `GET /review/v1/children/{id}/crate`,
`fivesafes-tes review crate`) and stays inside the TRE: the researcher's record is the gateway's,
built from the researcher view only. What the rules found and the checkers decided is on the review
page itself, file by file; this record says who asked for what and who let it run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fivesafes_tes.agent.tables import LocalChild, LocalDecision, LocalProject
from fivesafes_tes.auth.principal import name_key
from fivesafes_tes.crates.profile import person_id
from fivesafes_tes.crates.record import (
    OURS,
    RequestFacts,
    SignOffFact,
    TaskFacts,
    TreFacts,
    activity_record,
)
from fivesafes_tes.db.base import utcnow
from fivesafes_tes.submission.researcher_view import rfc3339
from fivesafes_tes.submission.stages import Stage

FILENAME = "ro-crate-metadata.json"
MEDIA_TYPE = "application/ld+json"


def activity_crate(
    session: Session, tre: str, child_id: str, *, now: datetime | None = None
) -> dict[str, Any]:
    """ro-crate-metadata.json of the request of `child_id`, as this TRE knows it; LookupError if the
    TRE has no such child."""
    child = session.get(LocalChild, child_id)
    if child is None:
        raise LookupError(f"no child {child_id} in this TRE")
    project = session.get(LocalProject, child.project)
    decided = {
        d.username: d
        for d in session.scalars(
            select(LocalDecision).where(
                LocalDecision.project == child.project,
                LocalDecision.username.in_(["", name_key(child.username)]),
            )
        )
    }
    steps = ((child.result or {}).get("outcome") or {}).get("steps") or []
    starts = [s["start_time"] for s in steps if s.get("start_time")]
    ends = [s["end_time"] for s in steps if s.get("end_time")]
    try:
        state = Stage(child.stage).tes_state().value
    except ValueError:  # a stage this version does not know: say nothing of it
        state = "UNKNOWN"
    here = TreFacts(
        name=tre,
        title=tre,
        stage=child.stage,
        started_at=starts[0] if starts else None,
        ended_at=ends[-1] if ends else None,
        sign_offs=(
            _sign_off("project", child.project, decided.get("")),
            _sign_off("person", child.username, decided.get(name_key(child.username))),
        ),
    )
    facts = TaskFacts(
        task_id=child.task_id,
        name=child.task.get("name"),
        state=state,
        created_at=child.submitted_at or rfc3339(child.created_at),
        document=child.task,
        submitter=child.username,
        submitter_id=person_id(child.submitter_issuer, child.submitter_subject),
        project=child.project,
        project_title=project.title if project is not None else "",
        generated_at=rfc3339(now or utcnow()),
        tres=(here,),
        request=RequestFacts.from_json(child.request) if child.request is not None else None,
    )
    return activity_record(facts)


def _sign_off(on: str, name: str, row: LocalDecision | None) -> SignOffFact:
    if row is None:
        return SignOffFact(on=on, name=name, decision="")
    return SignOffFact(
        on=on,
        name=name,
        decision=row.decision,
        decided_by=row.decided_by_name or row.decided_by,
        reason=row.reason,
        decided_at=rfc3339(row.decided_at),
    )


@dataclass(frozen=True)
class Action:
    """One action the crate records, as the review page lists it."""

    name: str
    kind: str  # what the profile calls it (SignOff, ValidationCheck, ...) or its schema.org type
    status: str  # potential | active | completed | failed
    by: str
    when: str
    description: str
    recorded: bool  # written by the gateway or this TRE; False for what the request crate itself says


@dataclass(frozen=True)
class CrateView:
    """What the review page shows of a crate: its root's name and description, and its actions in the
    order the root mentions them. An action the request crate brought (its requested run, say) is only
    what the submitter wrote: intake drops any assessment it brings and any entity posing as ours, and
    the page says which rows are the submitter's words."""

    name: str
    description: str
    identifier: str
    actions: list[Action]


def view(crate: dict[str, Any]) -> CrateView:
    """The crate read back for a person: every action its root mentions, with who did it and when."""
    entities = {e["@id"]: e for e in crate.get("@graph", []) if isinstance(e, dict) and "@id" in e}
    root = entities.get("./", {})
    actions = []
    for entity_id in _ids(root.get("mentions")):
        entity = entities.get(entity_id)
        if entity is None or not any(t.endswith("Action") for t in _types(entity)):
            continue
        actions.append(
            Action(
                name=_text(entity.get("name")) or entity_id,
                kind=_kind(entity),
                status=_status(entity.get("actionStatus")),
                by=", ".join(_text(entities.get(a, {}).get("name")) or a for a in _ids(entity.get("agent"))),
                when=_text(entity.get("endTime") or entity.get("startTime")),
                description=_text(entity.get("description")),
                recorded=entity_id.startswith(OURS),
            )
        )
    identifier = root.get("identifier")
    return CrateView(
        name=_text(root.get("name")),
        description=_text(root.get("description")),
        identifier=", ".join(
            _text(i) for i in (identifier if isinstance(identifier, list) else [identifier])
        ),
        actions=actions,
    )


def _status(value: Any) -> str:
    """potential, active, completed or failed, from schema.org's ActionStatusType (an IRI or a ref)."""
    iri = value if isinstance(value, str) else _first(_ids(value))
    return iri.rpartition("/")[2].removesuffix("ActionStatus").lower()


def _ids(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [v["@id"] for v in values if isinstance(v, dict) and isinstance(v.get("@id"), str)]


def _types(entity: dict[str, Any]) -> list[str]:
    kinds = entity.get("@type", [])
    return [k for k in (kinds if isinstance(kinds, list) else [kinds]) if isinstance(k, str)]


def _kind(entity: dict[str, Any]) -> str:
    extra = _first(_ids(entity.get("additionalType")))
    return extra.rpartition("#")[2] if extra else " ".join(_types(entity))


def _first(values: list[str]) -> str:
    return values[0] if values else ""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
