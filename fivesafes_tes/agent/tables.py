"""The agent's own small database: what it is doing, so a restart resumes instead of repeating, and
what this TRE's admins decided. It lives inside the TRE; the gateway never sees it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fivesafes_tes.db.base import NAMING, utcnow
from fivesafes_tes.egress.held import HeldFile, parse


class AgentBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class LocalChild(AgentBase):
    """One leased child as this agent knows it; `stage` is the last stage it reported."""

    __tablename__ = "agent_children"
    # The checkers' queue: children at one stage, oldest first.
    __table_args__ = (Index("ix_agent_children_stage_created_at", "stage", "created_at"),)

    child_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(36))
    attempt: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(32))
    project: Mapped[str] = mapped_column(String(63))
    username: Mapped[str] = mapped_column(String(255))  # the submitter's member name, for display
    # Who submitted, as the gateway's issuer knows them: what the no-self-approval rule compares.
    submitter_issuer: Mapped[str] = mapped_column(String(512), default="")
    submitter_subject: Mapped[str] = mapped_column(String(255), default="")
    task: Mapped[dict[str, Any]] = mapped_column(JSON)
    submitted_at: Mapped[str] = mapped_column(String(40), default="")  # the task's (RFC 3339), from the lease
    # The request crate as the gateway's intake kept it (`crates.record.RequestFacts.to_json`); None for
    # a bare TES task. What the TRE's activity record of the request grows from (`agent.record`).
    request: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    next_seq: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)  # False once nothing more is ours to do
    # Unexpected errors in a row in this child's handling at its current stage, and when it may be
    # tried again: kept here so that a restart neither resets the count nor skips the wait.
    errors: Mapped[int] = mapped_column(Integer, default=0)
    retry_at: Mapped[float] = mapped_column(Float, default=0.0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)  # for the TRE's admins only
    # Attempts this agent took on while the task was staged, run or checked (the first counts one): a
    # lease re-offered there means the agent died or stalled with the task; past the cap it is given up.
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class OutgoingEvent(AgentBase):
    """A stage event written before it is sent, so after a crash the same (attempt, seq) is re-sent."""

    __tablename__ = "agent_outbox"

    child_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage: Mapped[str] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    sent: Mapped[bool] = mapped_column(Boolean, default=False)  # the gateway took it (or it is void)
    # Epoch seconds before which it is not sent: the reporting granularity, then the retry backoff.
    not_before: Mapped[float] = mapped_column(Float, default=0.0)
    refusals: Mapped[int] = mapped_column(Integer, default=0)  # times the gateway refused it


class LocalDecision(AgentBase):
    """This TRE's decision on a project (username "") or on a person within a project. A person is
    named by their casefolded member name; an approval is bound to the subject it first applies to."""

    __tablename__ = "agent_decisions"

    project: Mapped[str] = mapped_column(String(63), primary_key=True)
    username: Mapped[str] = mapped_column(String(255), primary_key=True)
    person_issuer: Mapped[str | None] = mapped_column(String(512), nullable=True)
    person_subject: Mapped[str | None] = mapped_column(String(255), nullable=True)
    decision: Mapped[str] = mapped_column(String(16))  # approved | rejected
    reason: Mapped[str] = mapped_column(Text, default="")
    decided_by: Mapped[str] = mapped_column(String(1024))  # the admin's issuer#subject
    decided_by_name: Mapped[str] = mapped_column(String(255), default="")
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    pushed: Mapped[bool] = mapped_column(Boolean, default=False)


class LocalProject(AgentBase):
    """A project assigned to this TRE, as last synced from the gateway (for admins to decide on)."""

    __tablename__ = "agent_projects"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    title: Mapped[str] = mapped_column(String(255), default="")
    starts_on: Mapped[str | None] = mapped_column(String(10), nullable=True)
    ends_on: Mapped[str | None] = mapped_column(String(10), nullable=True)
    members: Mapped[list[str]] = mapped_column(JSON, default=list)


class HeldFileRecord(AgentBase):
    """A file held in the airlock for a child, with what the automated rules found in it."""

    __tablename__ = "agent_held_files"

    child_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    name: Mapped[str] = mapped_column(String(1024))  # container path, or step-N.stdout / .stderr
    kind: Mapped[str] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    verdict: Mapped[str] = mapped_column(
        String(16), default="review"
    )  # worst rule verdict: pass | review | fail
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # each rule's result, versioned

    @classmethod
    def of(
        cls, file: HeldFile, child_id: str, key: str, verdict: str, results: list[dict[str, Any]]
    ) -> HeldFileRecord:
        """The row for a file held at store `key`, with what the rules found."""
        return cls(
            child_id=child_id,
            key=key,
            name=file.name,
            kind=file.kind,
            size=file.size,
            sha256=file.sha256,
            verdict=verdict,
            results=results,
        )

    @property
    def held(self) -> HeldFile:
        """The file this row keeps, without a local copy."""
        key = parse(self.name)
        return HeldFile(key, self.size, self.sha256)


class ReviewDecision(AgentBase):
    """One output checker's decision on one held file, with the reason the researcher will read. The
    checker is their token's issuer and subject; `checker` keeps the name they showed, for the record."""

    __tablename__ = "agent_review_decisions"

    child_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    checker_issuer: Mapped[str] = mapped_column(String(512), primary_key=True)
    checker_subject: Mapped[str] = mapped_column(String(255), primary_key=True)
    checker: Mapped[str] = mapped_column(String(255))
    decision: Mapped[str] = mapped_column(String(16))  # approved | rejected
    reason: Mapped[str] = mapped_column(Text, default="")
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AgentIdentity(AgentBase):
    """This agent's deployment: an id made at its first start and labelled on everything it creates in
    the container engine, so that another agent on the same engine (even of a TRE with the same name)
    never sweeps or re-attaches to it. It lives with the children it belongs to."""

    __tablename__ = "agent_identity"

    deployment: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RelayRun(AgentBase):
    """A run the TES relay executor started on the TRE's own TES server: its remote id, so that a
    restarted agent re-attaches to it instead of starting it again, and how it ended once known."""

    __tablename__ = "agent_relay_runs"

    child_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer)
    remote_id: Mapped[str | None] = mapped_column(String(255), nullable=True)  # None: being created
    deadline: Mapped[float] = mapped_column(Float)  # epoch seconds the run must end by (its runtime limit)
    max_bytes: Mapped[int] = mapped_column(BigInteger)  # most the run may leave in its staging area
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
