"""Tasks as the submission layer stores them: create, read, list, cancel.

Every function takes the caller's session and the acting user's id; nothing here knows
about HTTP. Filters and pagination run in SQL so a list page costs the same at 10^3 and 10^6
stored tasks.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import Table, and_, exists, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fivesafes_tes import audit
from fivesafes_tes.db.base import Base, utcnow
from fivesafes_tes.submission import file_outputs, researcher_view
from fivesafes_tes.submission.federation import Target
from fivesafes_tes.submission.ids import decode_page_token, encode_page_token, new_task_id
from fivesafes_tes.submission.researcher_view import rfc3339
from fivesafes_tes.submission.stages import Stage
from fivesafes_tes.submission.tables import Child, IdempotencyKey, Membership, Task, TaskTag, Tre
from fivesafes_tes.tes import DEFAULT_CAPS, State, TaskCaps, TaskRequest, View, render
from fivesafes_tes.tes.admission import image_allowed

MAX_PAGE_SIZE = 2047
DEFAULT_PAGE_SIZE = 256


class TaskNotFound(LookupError):
    """No such task (or released file), or not one the caller may see: the two are indistinguishable to
    the caller on purpose, and each refusal is audited (`record_refusal`) with whether `object` exists."""

    def __init__(
        self, task_id: str, *, actor: str, exists: bool, object: str = "", message: str = ""
    ) -> None:
        super().__init__(task_id)
        self.actor, self.exists = actor, exists
        self.object = object or f"task:{task_id}"
        self.message = message or f"no task {task_id!r} visible to you"


def record_refusal(session: Session, refused: TaskNotFound) -> None:
    """The audit record of one refused attempt; unknown ids too, so probing for ids shows in the log and
    a refusal costs the same whether the object exists or not."""
    audit.record(
        session,
        actor=refused.actor,
        action="access.denied",
        object=refused.object,
        outcome="denied",
        detail={"exists": refused.exists},
    )


def _refused(session: Session, actor: Actor, task_id: str) -> TaskNotFound:
    return TaskNotFound(task_id, actor=actor.name, exists=session.get(Task, task_id) is not None)


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used with a different body."""


class InvalidTask(ValueError):
    """A task the schema accepts but this gateway cannot run; the message names the fix."""


@dataclass(frozen=True)
class Actor:
    """Who acts, for ownership and the audit record."""

    user_id: int
    name: str


@dataclass(frozen=True)
class SubmissionPolicy:
    """What the gateway checks before it stores a task (each TRE checks again for itself)."""

    supported_backend_parameters: frozenset[str]
    max_content_bytes: int
    allowed_images: tuple[str, ...]  # fnmatch patterns; a digest pin is part of the name it matches
    caps: TaskCaps = DEFAULT_CAPS
    file_output_root: str | None = None  # the folder file:// outputs are written under; None: refused


@dataclass(frozen=True)
class Created:
    task_id: str
    tre_ids: list[int]  # whose agents have new work; empty for an idempotent replay


@dataclass
class ListQuery:
    name_prefix: str | None = None
    state: State | None = None
    tags: list[tuple[str, str]] = field(default_factory=list)  # value "" matches any value
    page_size: int = DEFAULT_PAGE_SIZE
    page_token: str | None = None
    view: View = View.MINIMAL
    results_url: str = ""  # where released files are downloaded: {results_url}/{file id}


@dataclass
class Page:
    tasks: list[dict[str, Any]]
    next_page_token: str | None


def request_fingerprint(request: TaskRequest) -> str:
    """SHA-256 of the task's canonical JSON: the same task sent twice hashes the same."""
    canonical = json.dumps(
        request.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def apply_backend_parameters(request: TaskRequest, supported: set[str]) -> list[str]:
    """Drop backend_parameters keys we do not support, as the spec says; return the warnings.

    Keys compare case-insensitively. With backend_parameters_strict, an unsupported key
    refuses the task instead.
    """
    resources = request.resources
    if resources is None or not resources.backend_parameters:
        return []
    lowered = {s.lower() for s in supported}
    unsupported = sorted(k for k in resources.backend_parameters if k.lower() not in lowered)
    if not unsupported:
        return []
    if resources.backend_parameters_strict:
        raise InvalidTask(
            f"resources.backend_parameters: unsupported key(s) {', '.join(unsupported)}; "
            "this server supports "
            f"{', '.join(sorted(supported)) or 'none'} "
            "(see tesResources_backend_parameters in service-info), "
            "or set backend_parameters_strict to false to have them ignored"
        )
    resources.backend_parameters = {
        k: v for k, v in resources.backend_parameters.items() if k.lower() in lowered
    }
    return [
        f"backend_parameters key {k!r} is not supported by this server and was ignored" for k in unsupported
    ]


def target_key(actor: Actor, request: TaskRequest, today: date) -> tuple[int, str, str, date]:
    """What resolve_target depends on, for caching its answer briefly."""
    tags = {k.lower(): (v or "") for k, v in (request.tags or {}).items()}
    return actor.user_id, tags.get("project", ""), tags.get("tres", ""), today


def create_task(
    session: Session,
    actor: Actor,
    request: TaskRequest,
    policy: SubmissionPolicy,
    target: Target,
    *,
    idempotency_key: str | None = None,
    detail: dict[str, Any] | None = None,
) -> Created:
    """Store a new task with one child per target TRE; with an Idempotency-Key, a repeat returns the
    first task. `detail` joins the audit record of its creation (a crate's identifiers)."""
    fingerprint = request_fingerprint(request) if idempotency_key is not None else ""  # of the body as sent
    if idempotency_key is not None:
        existing = _replayed(session, actor, idempotency_key, fingerprint)
        if existing:
            return Created(existing, [])
    warnings = apply_backend_parameters(request, set(policy.supported_backend_parameters))
    task_id = new_task_id()
    now = utcnow()
    rows = {
        "task": {
            "id": task_id,
            "owner_id": actor.user_id,
            "project_id": target.project.id,
            "name": request.name,
            "state": State.QUEUED.value,
            "created_at": now,
            "updated_at": now,
            "system_logs": warnings,
            "document": request.model_dump(mode="json", exclude_none=True, exclude={"tags"}),
        },
        "tags": [{"task_id": task_id, "key": k, "value": v or ""} for k, v in (request.tags or {}).items()],
        "children": [
            {
                "id": new_task_id(),
                "task_id": task_id,
                "tre_id": tre.id,
                "stage": Stage.RECEIVED.value,
                "attempt": 0,
                "cancel_acknowledged": False,
                "updated_at": now,
                "system_logs": [],
                "report": {},
            }
            for tre in target.tres
        ],
    }
    if idempotency_key is None:
        _insert(session, rows)
    else:
        try:
            with session.begin_nested():
                _insert(session, rows)
                session.execute(
                    _core(IdempotencyKey)
                    .insert()
                    .values(
                        owner_id=actor.user_id,
                        key=idempotency_key,
                        body_sha256=fingerprint,
                        task_id=task_id,
                        created_at=now,
                    )
                )
        except IntegrityError:
            # Another request with the same Idempotency-Key committed first.
            existing = _replayed(session, actor, idempotency_key, fingerprint)
            if existing is None:
                raise
            return Created(existing, [])
    audit.record(
        session,
        actor=actor.name,
        action="task.create",
        object=f"task:{task_id}",
        outcome="ok",
        detail={"project": target.project.name, "tres": [t.name for t in target.tres], **(detail or {})},
    )
    return Created(task_id, [t.id for t in target.tres])


def _insert(session: Session, rows: dict[str, Any]) -> None:
    """Core inserts: one statement per table, no ORM unit of work on the hot path."""
    # The tables, not the mapped classes: an ORM-enabled insert costs more per call on this hot path.
    session.execute(_core(Task).insert().values(**rows["task"]))
    if rows["tags"]:
        session.execute(_core(TaskTag).insert(), rows["tags"])
    session.execute(_core(Child).insert(), rows["children"])


def _core(model: type[Base]) -> Table:
    """The Core table behind a mapped class: SQLAlchemy types `__table__` as any FROM clause, and the
    shared metadata holds it as the Table it is."""
    return Base.metadata.tables[model.__tablename__]


def check_policy(request: TaskRequest, policy: SubmissionPolicy) -> None:
    """Refuse, before anything is stored, a task this gateway will not take; the message names the fix."""
    over = policy.caps.refusal(
        {
            "executors": [{"env": e.env} for e in request.executors],
            "inputs": request.inputs,
            "outputs": request.outputs,
            "volumes": request.volumes,
            "tags": request.tags,
        },
        "this gateway",
    )
    if over:
        raise InvalidTask(over)
    for n, item in enumerate(request.inputs or []):
        if item.content and len(item.content.encode()) > policy.max_content_bytes:
            raise InvalidTask(
                f"inputs.{n}.content: over this server's {policy.max_content_bytes}-byte limit for literal "
                "content; stage the file in the project's input store and give its url instead"
            )
    for n, executor in enumerate(request.executors):
        if not image_allowed(executor.image, policy.allowed_images):
            allowed = ", ".join(policy.allowed_images) or (
                "empty: ask the federation admin to set FIVESAFES_ALLOWED_IMAGES"
            )
            raise InvalidTask(
                f"executors.{n}.image: {executor.image!r} is not on this federation's image allow-list "
                f"({allowed})"
            )
    for n, output in enumerate(request.outputs or []):
        if not file_outputs.is_file_url(output.url):
            continue
        if policy.file_output_root is None:
            raise InvalidTask(
                f"outputs.{n}.url: this gateway has no folder for file:// outputs (its admin may set "
                f"FIVESAFES_FILE_OUTPUT_ROOT), so {output.url!r} would never be written; name an s3:// url "
                "instead, or download the released files from the gateway (fivesafes-tes results TASK_ID)"
            )
        try:
            file_outputs.relative_path(output.url, policy.file_output_root)
        except file_outputs.UnsafeDestination as exc:
            raise InvalidTask(f"outputs.{n}.url: {exc}") from None


def check_admission(request: TaskRequest, target: Target) -> None:
    """Refuse, before anything is stored, a task that a target TRE has published it will not run,
    in that TRE's words. A TRE that has not published yet is not asked: it checks for itself."""
    if not target.policies:
        return
    document = request.model_dump(mode="json", exclude_none=True, exclude={"tags"})  # as TREs get it
    refusing = {
        tre.name: why
        for tre in target.tres
        if tre.id in target.policies
        and (why := target.policies[tre.id].refusal(document, target.project.name))
    }
    if not refusing:
        return
    others = [tre.name for tre in target.tres if tre.name not in refusing]
    detail = "; ".join(refusing.values())
    if others:
        detail += f" (or send it only to {', '.join(others)} with the tag tres)"
    raise InvalidTask(detail)


def _replayed(session: Session, actor: Actor, key: str, fingerprint: str) -> str | None:
    row = session.get(IdempotencyKey, (actor.user_id, key))
    if row is None:
        return None
    if row.body_sha256 != fingerprint:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used for a different task; use a new key for a new task"
        )
    return row.task_id


def _their_projects(actor: Actor):  # type: ignore[no-untyped-def]
    return select(Membership.project_id).where(Membership.user_id == actor.user_id)


def _their_unprojected(actor: Actor):  # type: ignore[no-untyped-def]
    """Their own tasks stored before projects existed."""
    return and_(Task.project_id.is_(None), Task.owner_id == actor.user_id)


def _scopes(session: Session, actor: Actor) -> list[Any]:
    """One condition per slice of what the caller may see: each of their projects, and their own tasks
    stored before projects existed. Each slice is one index range (project_id, id) or (owner_id, id)."""
    project_ids = session.scalars(_their_projects(actor))
    return [Task.project_id == p for p in project_ids] + [_their_unprojected(actor)]


def _visible(actor: Actor):  # type: ignore[no-untyped-def]
    """The same scopes as one condition with a membership subquery: a single round trip for looking up
    one task by id, which every TES status poll does."""
    return or_(Task.project_id.in_(_their_projects(actor)), _their_unprojected(actor))


def _owned(session: Session, actor: Actor, task_id: str, *, for_update: bool = False) -> Task:
    query = select(Task).where(Task.id == task_id, _visible(actor))
    if for_update:
        query = query.with_for_update()
    task = session.scalars(query).one_or_none()
    if task is None:
        raise _refused(session, actor, task_id)
    return task


def visible_task(session: Session, actor: Actor, task_id: str) -> Task:
    """The task, if the caller may see it; TaskNotFound otherwise (unknown and forbidden look the same)."""
    return _owned(session, actor, task_id)


def get_task(
    session: Session, actor: Actor, task_id: str, view: View = View.MINIMAL, *, results_url: str = ""
) -> dict[str, Any]:
    if view is View.MINIMAL:
        row = session.execute(
            select(Task.id, Task.state).where(Task.id == task_id, _visible(actor))
        ).one_or_none()
        if row is None:
            raise _refused(session, actor, task_id)
        return {"id": row.id, "state": row.state}
    task = _owned(session, actor, task_id)
    return render(_documents(session, [task], results_url)[0], view)


def list_tasks(session: Session, actor: Actor, query: ListQuery) -> Page:
    if not 1 <= query.page_size <= MAX_PAGE_SIZE:
        raise InvalidTask(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
    minimal = query.view is View.MINIMAL
    stmt = select(Task.id, Task.state) if minimal else select(Task)
    if query.name_prefix:
        stmt = stmt.where(Task.name.like(_like_prefix(query.name_prefix), escape="\\"))
    if query.state is not None:
        stmt = stmt.where(Task.state == query.state.value)
    for key, value in query.tags:
        tag = select(TaskTag.task_id).where(TaskTag.task_id == Task.id, TaskTag.key == key)
        if value:
            tag = tag.where(TaskTag.value == value)
        stmt = stmt.where(exists(tag))
    if query.page_token:
        stmt = stmt.where(Task.id < decode_page_token(query.page_token))
    stmt = stmt.order_by(Task.id.desc()).limit(query.page_size + 1)

    # One query per scope, merged newest first: an OR across scopes would make the database read and
    # sort every visible row; each scope alone is a backward walk of one index, stopping at the page.
    fetch = session.execute if minimal else session.scalars
    per_scope = [list(fetch(stmt.where(scope))) for scope in _scopes(session, actor)]
    rows: list[Any] = list(
        itertools.islice(heapq.merge(*per_scope, key=lambda r: r.id, reverse=True), query.page_size + 1)
    )
    more = len(rows) > query.page_size
    rows = rows[: query.page_size]
    if minimal:
        tasks = [{"id": r.id, "state": r.state} for r in rows]
    else:
        tasks = [render(doc, query.view) for doc in _documents(session, rows, query.results_url)]
    token = encode_page_token(rows[-1].id) if more else None
    return Page(tasks=tasks, next_page_token=token)


def cancel_task(session: Session, actor: Actor, task_id: str) -> list[int]:
    """Cancel at once: the task and every child still in progress. Returns the TREs whose agents must
    stop something; an empty list when the task had already ended (a no-op, as the spec says)."""
    task = _owned(session, actor, task_id, for_update=True)
    if State(task.state).is_final:
        return []
    now = utcnow()
    task.state = State.CANCELED.value
    task.system_logs = [*task.system_logs, f"canceled by {actor.name} at {rfc3339(now)}"]
    tre_ids = []
    for child in session.scalars(select(Child).where(Child.task_id == task_id).with_for_update()):
        if not Stage(child.stage).is_final:
            child.stage = Stage.CANCELED.value
            child.ended_at = now
            tre_ids.append(child.tre_id)
    audit.record(session, actor=actor.name, action="task.cancel", object=f"task:{task_id}", outcome="ok")
    return tre_ids


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _tags_of(session: Session, task_ids: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    if not task_ids:
        return out
    for tag in session.scalars(select(TaskTag).where(TaskTag.task_id.in_(task_ids))):
        out.setdefault(tag.task_id, {})[tag.key] = tag.value
    return out


def children_of(session: Session, task_ids: list[str]) -> dict[str, list[tuple[Child, str]]]:
    """Each task's children with their TRE's name, in TRE-name order."""
    out: dict[str, list[tuple[Child, str]]] = {}
    if not task_ids:
        return out
    rows = session.execute(
        select(Child, Tre.name)
        .join(Tre, Tre.id == Child.tre_id)
        .where(Child.task_id.in_(task_ids))
        .order_by(Tre.name)
    )
    for child, tre in rows:
        out.setdefault(child.task_id, []).append((child, tre))
    return out


def _documents(session: Session, tasks: list[Task], results_url: str) -> list[dict[str, Any]]:
    """FULL documents for a page of tasks: tags, children and released files in one query each."""
    from fivesafes_tes.submission.results import released_files

    ids = [t.id for t in tasks]
    tags, children, released = (
        _tags_of(session, ids),
        children_of(session, ids),
        released_files(session, ids),
    )
    return [
        _full_document(t, tags.get(t.id, {}), children.get(t.id, []), released.get(t.id, []), results_url)
        for t in tasks
    ]


def _full_document(
    task: Task, tags: dict[str, str], children: list[tuple[Child, str]], released: list[Any], results_url: str
) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": task.id, "state": task.state, **task.document}
    doc["tags"] = tags
    doc["creation_time"] = rfc3339(task.created_at)
    if children:
        doc["logs"] = [
            researcher_view.task_log(
                task, child, tre, [f for f, _ in released if f.child_id == child.id], results_url
            )
            for child, tre in children
        ]
    else:
        doc["logs"] = (
            [{"logs": [], "outputs": [], "system_logs": list(task.system_logs)}] if task.system_logs else []
        )
    return doc
