"""Tasks as the submission layer stores them: create, read, list, cancel.

Every function takes the caller's session and the acting user's id; nothing here knows
about HTTP. Filters and pagination run in SQL so a list page costs the same at 10^3 and 10^6
stored tasks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fivesafes_tes import audit
from fivesafes_tes.db.base import utcnow
from fivesafes_tes.submission.ids import decode_page_token, encode_page_token, new_task_id
from fivesafes_tes.submission.tables import IdempotencyKey, Task, TaskTag
from fivesafes_tes.tes import State, TaskRequest, View, render

MAX_PAGE_SIZE = 2047
DEFAULT_PAGE_SIZE = 256


class TaskNotFound(LookupError):
    """No such task, or not one the caller may see (the two are indistinguishable on purpose)."""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used with a different body."""


class InvalidTask(ValueError):
    """A task the schema accepts but this gateway cannot run; the message names the fix."""


@dataclass(frozen=True)
class Actor:
    """Who acts, for ownership and the audit record."""

    user_id: int
    name: str


@dataclass
class ListQuery:
    name_prefix: str | None = None
    state: State | None = None
    tags: list[tuple[str, str]] = field(default_factory=list)  # value "" matches any value
    page_size: int = DEFAULT_PAGE_SIZE
    page_token: str | None = None
    view: View = View.MINIMAL


@dataclass
class Page:
    tasks: list[dict[str, Any]]
    next_page_token: str | None


def request_fingerprint(request: TaskRequest) -> str:
    """SHA-256 of the task's canonical JSON: the same task sent twice hashes the same."""
    canonical = json.dumps(request.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":"))
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
            f"resources.backend_parameters: unsupported key(s) {', '.join(unsupported)}; this server supports "
            f"{', '.join(sorted(supported)) or 'none'} (see tesResources_backend_parameters in service-info), "
            "or set backend_parameters_strict to false to have them ignored"
        )
    resources.backend_parameters = {
        k: v for k, v in resources.backend_parameters.items() if k.lower() in lowered
    }
    return [f"backend_parameters key {k!r} is not supported by this server and was ignored" for k in unsupported]


def create_task(
    session: Session,
    actor: Actor,
    request: TaskRequest,
    *,
    supported_backend_parameters: set[str],
    max_content_bytes: int,
    idempotency_key: str | None = None,
) -> str:
    """Store a new task and return its id; with an Idempotency-Key, a repeat returns the first id."""
    for n, item in enumerate(request.inputs or []):
        if item.content and len(item.content.encode()) > max_content_bytes:
            raise InvalidTask(
                f"inputs.{n}.content: over this server's {max_content_bytes}-byte limit for literal content; "
                "stage the file in the project's input store and give its url instead"
            )
    fingerprint = request_fingerprint(request)
    if idempotency_key is not None:
        existing = _replayed(session, actor, idempotency_key, fingerprint)
        if existing:
            return existing
    warnings = apply_backend_parameters(request, supported_backend_parameters)
    task_id = new_task_id()
    tags = {k: (v or "") for k, v in (request.tags or {}).items()}
    document = request.model_dump(mode="json", exclude_none=True, exclude={"tags"})
    try:
        with session.begin_nested():
            session.add(
                Task(
                    id=task_id,
                    owner_id=actor.user_id,
                    name=request.name,
                    state=State.QUEUED.value,
                    document=document,
                    system_logs=warnings,
                )
            )
            session.add_all(TaskTag(task_id=task_id, key=k, value=v) for k, v in tags.items())
            session.flush()  # the task row must exist before the key that points at it
            if idempotency_key is not None:
                session.add(
                    IdempotencyKey(
                        owner_id=actor.user_id, key=idempotency_key, body_sha256=fingerprint, task_id=task_id
                    )
                )
            session.flush()
    except IntegrityError:
        # Another request with the same Idempotency-Key committed first.
        if idempotency_key is None:
            raise
        existing = _replayed(session, actor, idempotency_key, fingerprint)
        if existing is None:
            raise
        return existing
    audit.record(session, actor=actor.name, action="task.create", object=f"task:{task_id}", outcome="ok")
    return task_id


def _replayed(session: Session, actor: Actor, key: str, fingerprint: str) -> str | None:
    row = session.get(IdempotencyKey, (actor.user_id, key))
    if row is None:
        return None
    if row.body_sha256 != fingerprint:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used for a different task; use a new key for a new task"
        )
    return row.task_id


def _owned(session: Session, actor: Actor, task_id: str, *, for_update: bool = False) -> Task:
    query = select(Task).where(Task.id == task_id, Task.owner_id == actor.user_id)
    if for_update:
        query = query.with_for_update()
    task = session.scalars(query).one_or_none()
    if task is None:
        raise TaskNotFound(task_id)
    return task


def get_task(session: Session, actor: Actor, task_id: str, view: View = View.MINIMAL) -> dict[str, Any]:
    if view is View.MINIMAL:
        row = session.execute(
            select(Task.id, Task.state).where(Task.id == task_id, Task.owner_id == actor.user_id)
        ).one_or_none()
        if row is None:
            raise TaskNotFound(task_id)
        return {"id": row.id, "state": row.state}
    task = _owned(session, actor, task_id)
    return render(_full_document(task, _tags_of(session, [task.id]).get(task.id, {})), view)


def list_tasks(session: Session, actor: Actor, query: ListQuery) -> Page:
    if not 1 <= query.page_size <= MAX_PAGE_SIZE:
        raise InvalidTask(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
    minimal = query.view is View.MINIMAL
    stmt = select(Task.id, Task.state) if minimal else select(Task)
    stmt = stmt.where(Task.owner_id == actor.user_id)
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

    if minimal:
        rows: list[Any] = list(session.execute(stmt).all())
    else:
        rows = list(session.scalars(stmt).all())
    more = len(rows) > query.page_size
    rows = rows[: query.page_size]
    if minimal:
        tasks = [{"id": r.id, "state": r.state} for r in rows]
    else:
        tags = _tags_of(session, [r.id for r in rows])
        tasks = [render(_full_document(r, tags.get(r.id, {})), query.view) for r in rows]
    token = encode_page_token(rows[-1].id) if more else None
    return Page(tasks=tasks, next_page_token=token)


def cancel_task(session: Session, actor: Actor, task_id: str) -> bool:
    """Cancel at once; return False when the task had already ended (a no-op, as the spec says)."""
    task = _owned(session, actor, task_id, for_update=True)
    if State(task.state).is_final:
        return False
    task.state = State.CANCELED.value
    task.system_logs = [*task.system_logs, f"canceled by {actor.name} at {_rfc3339(utcnow())}"]
    audit.record(session, actor=actor.name, action="task.cancel", object=f"task:{task_id}", outcome="ok")
    return True


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _tags_of(session: Session, task_ids: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    if not task_ids:
        return out
    for tag in session.scalars(select(TaskTag).where(TaskTag.task_id.in_(task_ids))):
        out.setdefault(tag.task_id, {})[tag.key] = tag.value
    return out


def _full_document(task: Task, tags: dict[str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": task.id, "state": task.state, **task.document}
    doc["tags"] = tags
    doc["creation_time"] = _rfc3339(task.created_at)
    doc["logs"] = [{"logs": [], "outputs": [], "system_logs": list(task.system_logs)}] if task.system_logs else []
    return doc


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:  # SQLite hands back naive datetimes; we only ever store UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
