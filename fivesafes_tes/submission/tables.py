"""Tables of the submission layer: tasks as submitted, their tags, and idempotency keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from fivesafes_tes.db.base import Base, utcnow


class Task(Base):
    """A TES task as the researcher submitted it, with its state and logs as the gateway derives them."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_owner_id_id", "owner_id", "id"),
        Index("ix_tasks_owner_id_state_id", "owner_id", "state", "id"),
        Index("ix_tasks_owner_id_name_id", "owner_id", "name", "id"),
    )

    # Time-ordered (UUIDv7 text), so keyset pagination by id is newest-first by creation.
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    # The submitted task, spec fields only, read-only fields removed.
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    system_logs: Mapped[list[str]] = mapped_column(JSON, default=list)

    tags: Mapped[list[TaskTag]] = relationship(
        back_populates="task", cascade="all, delete-orphan", lazy="raise"
    )


class TaskTag(Base):
    """Tags in their own table so tag filters are indexed lookups, not JSON scans."""

    __tablename__ = "task_tags"
    __table_args__ = (Index("ix_task_tags_key_value_task_id", "key", "value", "task_id"),)

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[str] = mapped_column(String(1024), default="")

    task: Mapped[Task] = relationship(back_populates="tags", lazy="raise")


class IdempotencyKey(Base):
    """One row per (user, Idempotency-Key): the body's hash and the task it made."""

    __tablename__ = "idempotency_keys"

    owner_id: Mapped[int] = mapped_column(Integer, ForeignKey("users.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    body_sha256: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
