"""Append to the audit chain and verify it.

Each record's hash covers its own fields and the previous record's hash, so editing, deleting,
inserting or reordering rows breaks the chain. The head row holds the newest seq and hash: appenders
lock it to take turns, and the verifier compares it with the last record to expose a cut-off tail.

A chain without a secret can be rewritten whole by someone with write access to the database, for
example by deleting the newest records and rewinding the head. Only a checkpoint kept elsewhere (a
``VerifyReport.head`` copied off the database) exposes that; pass it back to :func:`verify` as
``anchor``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from fivesafes_tes.audit.tables import AuditHead, AuditRecord
from fivesafes_tes.db.base import utcnow

GENESIS = "0" * 64
_HEAD_ID = 1
_BATCH = 1000
# The dialects' own INSERTs, for ON CONFLICT DO NOTHING.
_INSERT: dict[str, Callable[[Any], postgresql.Insert | sqlite.Insert]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}
# Plain tables for the append path, which runs inside every audited transaction. SQLAlchemy types
# a declarative class's __table__ as FromClause; for a class mapped to one table it is that Table.
_RECORDS = cast(Table, AuditRecord.__table__)
_HEAD = cast(Table, AuditHead.__table__)


@dataclass(frozen=True)
class Checkpoint:
    """A record's seq and hash: enough to prove later that the chain up to it was not rewritten."""

    seq: int
    hash: str


class ProblemKind(StrEnum):
    HASH_MISMATCH = "hash_mismatch"  # a record's fields no longer match its hash: edited
    SEQ_GAP = "seq_gap"  # seqs are not contiguous: records deleted or renumbered
    CHAIN_BROKEN = "chain_broken"  # prev_hash is not the previous record's hash: deleted, inserted, moved
    HEAD_MISSING = "head_missing"  # records exist but the head row is gone
    HEAD_MISMATCH = "head_mismatch"  # the head names a record that is missing or different: tail cut off
    ANCHOR_MISMATCH = "anchor_mismatch"  # an externally kept checkpoint no longer matches


@dataclass(frozen=True)
class Problem:
    seq: int
    kind: ProblemKind
    message: str


@dataclass
class VerifyReport:
    """What :func:`verify` found; ``head`` is the newest record, worth keeping as a future anchor."""

    ok: bool
    records: int
    problems: list[Problem] = field(default_factory=list)
    head: Checkpoint | None = None


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    object: str,
    outcome: str,
    detail: dict[str, Any] | None = None,
) -> AuditRecord:
    """Append one record inside the caller's transaction, so it commits or rolls back with the event.

    ``detail`` is stored and hashed as given: callers never put tokens, passwords, keys, presigned
    URLs or output contents in it (RELIABILITY 28). It must be JSON-serialisable without NaN.
    """
    seq, prev = _lock_head(session)
    entry = AuditRecord(
        seq=seq + 1,
        at=utcnow(),
        actor=actor,
        action=action,
        object=object,
        outcome=outcome,
        # Round-trip so the object returned equals what a later read gives (tuples, non-str keys).
        detail=json.loads(json.dumps(detail or {}, allow_nan=False)),
        prev_hash=prev,
    )
    entry.hash = _digest(entry)
    # Core statements, not the ORM unit of work: this runs inside every audited transaction, and on
    # PostgreSQL the head row stays locked until that transaction commits.
    session.execute(
        _RECORDS.insert().values(
            seq=entry.seq,
            at=entry.at,
            actor=actor,
            action=action,
            object=object,
            outcome=outcome,
            detail=entry.detail,
            prev_hash=prev,
            hash=entry.hash,
        )
    )
    session.execute(_HEAD.update().where(_HEAD.c.id == _HEAD_ID).values(seq=entry.seq, hash=entry.hash))
    return entry


def verify(session: Session, *, anchor: Checkpoint | None = None) -> VerifyReport:
    """Walk the whole chain in seq order, in batches, and report every place it is broken."""
    # Read the head before the records: under READ COMMITTED, appends committed meanwhile then show
    # up as extra records after the head (checked like any other) rather than as a cut-off tail.
    head = session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == _HEAD_ID)).first()
    problems: list[Problem] = []
    count = 0
    last: Checkpoint | None = None
    at_head = Checkpoint(0, GENESIS)
    at_anchor: Checkpoint | None = None
    rows = session.execute(
        select(
            AuditRecord.seq,
            AuditRecord.at,
            AuditRecord.actor,
            AuditRecord.action,
            AuditRecord.object,
            AuditRecord.outcome,
            AuditRecord.detail,
            AuditRecord.prev_hash,
            AuditRecord.hash,
        )
        .order_by(AuditRecord.seq)
        .execution_options(yield_per=_BATCH)
    )
    for row in rows:
        count += 1
        expected_seq = last.seq + 1 if last else 1
        expected_prev = last.hash if last else GENESIS
        if row.seq != expected_seq:
            problems.append(
                Problem(row.seq, ProblemKind.SEQ_GAP, f"expected seq {expected_seq}, found {row.seq}")
            )
        if _digest(row) != row.hash:
            problems.append(Problem(row.seq, ProblemKind.HASH_MISMATCH, "fields do not match the hash"))
        if row.prev_hash != expected_prev:
            problems.append(
                Problem(row.seq, ProblemKind.CHAIN_BROKEN, "prev_hash is not the previous record's hash")
            )
        last = Checkpoint(row.seq, row.hash)
        if head is not None and row.seq == head.seq:
            at_head = last
        if anchor is not None and row.seq == anchor.seq:
            at_anchor = last

    if head is None:
        if last is not None:
            problems.append(Problem(last.seq, ProblemKind.HEAD_MISSING, "records exist but the head is gone"))
    elif at_head != Checkpoint(head.seq, head.hash):
        found = "different" if at_head.seq == head.seq else "missing"
        problems.append(
            Problem(head.seq, ProblemKind.HEAD_MISMATCH, f"the head's record {head.seq} is {found}")
        )
    if anchor is not None and at_anchor != anchor:
        found = "missing" if at_anchor is None else "different"
        problems.append(
            Problem(anchor.seq, ProblemKind.ANCHOR_MISMATCH, f"the anchored record {anchor.seq} is {found}")
        )
    return VerifyReport(ok=not problems, records=count, problems=problems, head=last)


def _lock_head(session: Session) -> tuple[int, str]:
    """Lock the head row (creating it first if this is the chain's first append); its seq and hash.

    ``FOR UPDATE`` makes PostgreSQL appenders take turns; SQLite ignores it because ``BEGIN
    IMMEDIATE`` already lets one writer in. Two first appenders may both find no head: the loser's
    insert waits for the winner and then does nothing, and its second select sees the winner's row.
    """
    locked = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == _HEAD_ID).with_for_update()
    head = session.execute(locked).one_or_none()
    if head is None:
        dialect_insert = _INSERT[session.get_bind().dialect.name]
        session.execute(
            dialect_insert(AuditHead).values(id=_HEAD_ID, seq=0, hash=GENESIS).on_conflict_do_nothing()
        )
        head = session.execute(locked).one()
    return head.seq, head.hash


def _digest(entry: Any) -> str:
    """SHA-256 of a canonical JSON form, identical whether the fields are fresh or read back."""
    canonical = json.dumps(
        {
            "seq": entry.seq,
            "at": _utc(entry.at).isoformat(timespec="microseconds"),
            "actor": entry.actor,
            "action": entry.action,
            "object": entry.object,
            "outcome": entry.outcome,
            "detail": entry.detail,
            "prev_hash": entry.prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _utc(moment: datetime) -> datetime:
    """SQLite reads timestamps back naive and PostgreSQL in the session's zone; both mean UTC here."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
