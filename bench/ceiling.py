"""The ceiling: a bare FastAPI route that inserts what CreateTask inserts, and nothing else.

Same tables and columns (a ``tasks`` row with its project, its ``task_tags`` rows, one
``task_children`` row per TRE of the project), same ``Database`` (engine, pool, SQLite pragmas,
``BEGIN IMMEDIATE``), same uvicorn settings as the gateway. No authentication, no request model,
no policy checks, no project lookup (resolved once at start-up), no audit record, no ORM unit of
work: the gap between this and the gateway is what our own code costs per request.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, FastAPI
from sqlalchemy import insert

from fivesafes_tes.db import Database, utcnow
from fivesafes_tes.submission.ids import new_task_id
from fivesafes_tes.submission.stages import Stage
from fivesafes_tes.submission.tables import Child, Task, TaskTag

_TASKS = Task.__table__
_TAGS = TaskTag.__table__
_CHILDREN = Child.__table__


def create_app(db: Database, owner_id: int, project_id: int, tre_ids: list[int]) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/tasks")
    def create(body: Annotated[dict[str, Any], Body()]) -> dict[str, str]:
        task_id = new_task_id()
        tags = body.pop("tags", None) or {}
        now = utcnow()
        task = {
            "id": task_id,
            "owner_id": owner_id,
            "project_id": project_id,
            "name": body.get("name"),
            "state": "QUEUED",
            "created_at": now,
            "updated_at": now,
            "document": body,
            "system_logs": [],
        }
        children = [
            {
                "id": new_task_id(),
                "task_id": task_id,
                "tre_id": tre_id,
                "stage": Stage.RECEIVED.value,
                "attempt": 0,
                "cancel_acknowledged": False,
                "updated_at": now,
                "system_logs": [],
                "report": {},
            }
            for tre_id in tre_ids
        ]
        with db.write() as session:
            session.execute(insert(_TASKS), [task])
            if tags:
                session.execute(
                    insert(_TAGS), [{"task_id": task_id, "key": k, "value": v or ""} for k, v in tags.items()]
                )
            if children:
                session.execute(insert(_CHILDREN), children)
        return {"id": task_id}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
