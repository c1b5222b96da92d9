"""Tables of the submission layer: the federation (TREs, projects, members, TRE decisions), tasks as
submitted with their tags and idempotency keys, and the per-TRE children with their stage events."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.sql import text

from fivesafes_tes.crates.record import RequestFacts
from fivesafes_tes.db.base import Base, utcnow
from fivesafes_tes.egress.held import HeldFile


class Task(Base):
    """A TES task as the researcher submitted it, with its state and logs as the gateway derives them."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_owner_id_id", "owner_id", "id"),
        Index("ix_tasks_owner_id_state_id", "owner_id", "state", "id"),
        Index("ix_tasks_owner_id_name_id", "owner_id", "name", "id"),
        Index("ix_tasks_project_id_id", "project_id", "id"),
        Index("ix_tasks_project_id_state_id", "project_id", "state", "id"),
        # Tasks stored before projects existed, visible to their owner only: a small partial index.
        Index(
            "ix_tasks_unprojected_owner_id_id",
            "owner_id",
            "id",
            sqlite_where=text("project_id IS NULL"),
            postgresql_where=text("project_id IS NULL"),
        ),
    )

    # Time-ordered (UUIDv7 text), so keyset pagination by id is newest-first by creation.
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"), nullable=True)
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


class Tre(Base):
    """A Trusted Research Environment in the federation; its agent authenticates as this name."""

    __tablename__ = "tres"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    title: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)  # lower-case slug; tag `project` matches it
    title: Mapped[str] = mapped_column(String(255), default="")
    starts_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    ends_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ProjectTre(Base):
    """Which TREs a project may run in (the federation's assignment; each TRE still decides)."""

    __tablename__ = "project_tres"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    tre_id: Mapped[int] = mapped_column(ForeignKey("tres.id", ondelete="CASCADE"), primary_key=True)


class Membership(Base):
    """A person in a project. Admins add people by username (casefolded), also before their first
    login; the row is bound to the user (issuer and subject) who first presents that name, and from
    then on only that user is the member, whatever name their token carries."""

    __tablename__ = "memberships"
    __table_args__ = (
        Index("ix_memberships_username", "username"),
        Index("ix_memberships_user_id", "user_id"),
    )

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    username: Mapped[str] = mapped_column(String(255), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TreDecision(Base):
    """A TRE admin's decision on a project, or on a person within a project, as its agent reported it."""

    __tablename__ = "tre_decisions"

    tre_id: Mapped[int] = mapped_column(ForeignKey("tres.id", ondelete="CASCADE"), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    username: Mapped[str] = mapped_column(String(255), primary_key=True)  # "" for the project itself
    decision: Mapped[str] = mapped_column(String(16))  # approved | rejected | pending
    reason: Mapped[str] = mapped_column(Text, default="")
    decided_by: Mapped[str] = mapped_column(String(255), default="")
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Child(Base):
    """One task's life in one TRE: leased to that TRE's agent, which reports its stages."""

    __tablename__ = "task_children"
    __table_args__ = (
        UniqueConstraint("task_id", "tre_id"),
        Index("ix_task_children_tre_id_stage", "tre_id", "stage"),
        Index("ix_task_children_tre_id_lease_expires_at", "tre_id", "lease_expires_at"),
        Index("ix_task_children_delivery_due_at", "delivery_due_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    tre_id: Mapped[int] = mapped_column(ForeignKey("tres.id"))
    stage: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Leases that expired while the task was staged, running or being checked (`leases.give_up`).
    lost_leases: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cancel_acknowledged: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    system_logs: Mapped[list[str]] = mapped_column(JSON, default=list)
    # What the agent reported about the run; shown to the researcher only once released.
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Released outputs still to be delivered where their TES output urls ask: when the next attempt
    # may start (a gateway working on it pushes this ahead as its claim), and attempts made so far.
    delivery_due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    delivery_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ChildEvent(Base):
    """Each stage event an agent sent, keyed so a replayed message has no second effect."""

    __tablename__ = "child_events"

    child_id: Mapped[str] = mapped_column(
        ForeignKey("task_children.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReleasedFile(Base):
    """A file a TRE released: where the gateway keeps it, its SHA-256, and the decision behind it."""

    __tablename__ = "released_files"
    __table_args__ = (UniqueConstraint("child_id", "name"), Index("ix_released_files_task_id", "task_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    child_id: Mapped[str] = mapped_column(ForeignKey("task_children.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(1024))  # container path, or step-N.stdout / step-N.stderr
    kind: Mapped[str] = mapped_column(String(16))  # output | stdout | stderr
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(1024))  # in the results store
    # Where it was also delivered (the url its TES output named), once the copy was verified.
    delivered_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    released_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @classmethod
    def of(cls, file: HeldFile, task_id: str, child_id: str, key: str) -> ReleasedFile:
        """The row of a released file stored at results-store `key`."""
        return cls(task_id=task_id, child_id=child_id, key=key, **file.described())

    @property
    def held(self) -> HeldFile:
        """The file this row records (rows are written by `of` only, so the parts agree)."""
        return HeldFile.from_description(self.name, self.kind, self.step, self.size, self.sha256)


class ApprovedFile(Base):
    """A file a TRE's output checkers approved, recorded by its agent before any upload: the gateway
    stores exactly these (RELIABILITY 33), and the list, once recorded, never changes."""

    __tablename__ = "approved_files"

    child_id: Mapped[str] = mapped_column(
        ForeignKey("task_children.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(1024), primary_key=True)  # as in released_files
    kind: Mapped[str] = mapped_column(String(16))
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PublishedPolicy(Base):
    """What a TRE said it will run (`tes.admission.Admission`), as its agent last published it: the
    gateway refuses at submission what a target TRE would refuse, and the TRE checks again."""

    __tablename__ = "tre_policies"

    tre_id: Mapped[int] = mapped_column(ForeignKey("tres.id", ondelete="CASCADE"), primary_key=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    published_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RequestCrate(Base):
    """The Five Safes request crate a task was submitted as (`POST /api/v1/crates`): its metadata as
    kept after intake (client AssessActions removed, agent and project mapped to the submitter), the
    BagIt identifiers, and what intake checked. Bare TES tasks have no row; their activity record is
    built from the task alone."""

    __tablename__ = "request_crates"

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    # bag-info.txt's External-Identifier, and the SHA-512 of the received zip as a whole.
    external_identifier: Mapped[str] = mapped_column(String(1024))
    zip_sha512: Mapped[str] = mapped_column(String(128))
    zip_size: Mapped[int] = mapped_column(BigInteger)
    language: Mapped[str] = mapped_column(String(16))  # tes | cwl
    # ro-crate-metadata.json as kept: the JSON-LD document the activity record grows from.
    metadata_doc: Mapped[dict[str, Any]] = mapped_column(JSON)
    # What intake checked, in order: [{"check": "bagit"|"profile", "passed": true, "detail": "..."}].
    checks: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # How many client-supplied AssessActions intake removed (RELIABILITY 5).
    stripped_assess_actions: Mapped[int] = mapped_column(Integer, default=0)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def facts(self) -> RequestFacts:
        """What an activity record is built from (`crates.record`), at the gateway or in a TRE."""
        from fivesafes_tes.submission import researcher_view  # it reads these tables

        return RequestFacts(
            metadata=self.metadata_doc,
            external_identifier=self.external_identifier,
            zip_sha512=self.zip_sha512,
            zip_size=self.zip_size,
            language=self.language,
            checks=tuple(self.checks or []),
            stripped_assess_actions=self.stripped_assess_actions,
            received_at=researcher_view.rfc3339(self.received_at),
        )
