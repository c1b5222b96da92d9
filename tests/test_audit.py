"""The audit chain: appends are contiguous under concurrency, and tampering with rows is found.

Every tampering is done the way an intruder with database access would: plain SQL on the tables,
never through ``record``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.orm import Session

from fivesafes_tes.audit import Checkpoint, ProblemKind, VerifyReport, chain, record, verify
from fivesafes_tes.audit.chain import GENESIS, _digest
from fivesafes_tes.audit.tables import AuditHead, AuditRecord
from fivesafes_tes.db import Database

N = 10
HASH, GAP, BROKEN = ProblemKind.HASH_MISMATCH, ProblemKind.SEQ_GAP, ProblemKind.CHAIN_BROKEN

_FIELDS = ("at", "actor", "action", "object", "outcome", "detail", "prev_hash", "hash")


@pytest.fixture(autouse=True)
def _small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stream in batches of 4 so every chain of 10 crosses batch boundaries while verifying."""
    monkeypatch.setattr(chain, "_BATCH", 4)


@pytest.fixture
def chained(database: Database) -> Database:
    """A database holding a valid chain of N records, one transaction each."""
    for i in range(1, N + 1):
        with database.write() as session:
            record(
                session,
                actor=f"user-{i}",
                action="task.submit",
                object=f"task/{i}",
                outcome="ok",
                detail={"tre": "tre-a", "n": i},
            )
    return database


def _verify(database: Database, anchor: Checkpoint | None = None) -> VerifyReport:
    with database.read() as session:
        return verify(session, anchor=anchor)


def _found(report: VerifyReport) -> set[tuple[int, ProblemKind]]:
    assert report.ok == (not report.problems)
    return {(p.seq, p.kind) for p in report.problems}


def _row(database: Database, seq: int) -> dict:
    with database.read() as session:
        return dict(
            session.execute(select(AuditRecord.__table__).where(AuditRecord.seq == seq)).one()._mapping
        )


def _sql(database: Database, *statements) -> None:
    with database.write() as session:
        for statement in statements:
            session.execute(statement)


def test_fresh_chain_verifies(database: Database) -> None:
    assert _verify(database) == VerifyReport(ok=True, records=0, problems=[], head=None)


def test_appended_records_link_and_verify(database: Database) -> None:
    with database.write() as session:
        first = record(session, actor="alice", action="login", object="user/alice", outcome="ok")
        second = record(session, actor="alice", action="task.submit", object="task/1", outcome="ok")
    with database.write() as session:
        third = record(
            session,
            actor="bob",
            action="release.decide",
            object="release/7",
            outcome="denied",
            detail={"reason": ("too", "few"), "rows": 3},
        )

    assert (first.seq, second.seq, third.seq) == (1, 2, 3)
    assert (first.prev_hash, second.prev_hash, third.prev_hash) == (GENESIS, first.hash, second.hash)
    assert len({first.hash, second.hash, third.hash}) == 3
    assert third.detail == {"reason": ["too", "few"], "rows": 3}
    assert first.at.utcoffset() == timedelta(0)
    stored = _row(database, 3)
    assert (stored["actor"], stored["outcome"], stored["detail"]) == ("bob", "denied", third.detail)
    assert _verify(database) == VerifyReport(ok=True, records=3, problems=[], head=Checkpoint(3, third.hash))


def test_a_long_chain_verifies_across_batches(chained: Database) -> None:
    report = _verify(chained)
    assert report.ok
    assert report.records == N
    assert report.head == Checkpoint(N, _row(chained, N)["hash"])


def test_record_rolls_back_with_the_callers_transaction(database: Database) -> None:
    def fail_after_recording() -> None:
        with database.write() as session:
            record(session, actor="alice", action="task.submit", object="task/1", outcome="ok")
            raise RuntimeError("the event itself failed")

    with pytest.raises(RuntimeError, match="the event itself failed"):
        fail_after_recording()

    assert _verify(database).records == 0
    with database.write() as session:
        assert record(session, actor="alice", action="login", object="user/alice", outcome="ok").seq == 1


def test_a_session_holding_a_stale_head_sees_appends_made_elsewhere(database: Database) -> None:
    with Session(database.engine, expire_on_commit=False) as kept:
        with kept.begin():
            record(kept, actor="alice", action="login", object="user/alice", outcome="ok")
            kept.get(AuditHead, 1)  # the head in this session's identity map, e.g. shown on a status page
        with database.write() as other:
            record(other, actor="bob", action="login", object="user/bob", outcome="ok")
        with kept.begin():
            assert record(kept, actor="alice", action="logout", object="user/alice", outcome="ok").seq == 3

    assert _verify(database).ok


def test_detail_that_cannot_be_stored_exactly_is_refused(database: Database) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"), database.write() as session:
        record(session, actor="a", action="x", object="o", outcome="ok", detail={"score": float("nan")})


def test_verify_does_not_depend_on_the_session_time_zone(chained: Database) -> None:
    if chained.is_sqlite:
        pytest.skip("SQLite has no session time zone; it reads timestamps back naive, covered everywhere")
    with chained.read() as session:
        session.execute(text("SET TIME ZONE 'America/St_Johns'"))
        assert session.scalar(select(AuditRecord.at).where(AuditRecord.seq == 1)).utcoffset() != timedelta(0)
        assert verify(session).ok


@pytest.mark.parametrize(
    "change",
    [
        lambda row: {"actor": "mallory"},
        lambda row: {"action": "login"},
        lambda row: {"object": "task/999"},
        lambda row: {"outcome": "denied"},
        lambda row: {"detail": {"tre": "tre-b", "n": 5}},
        lambda row: {"at": row["at"] + timedelta(microseconds=1)},
    ],
    ids=["actor", "action", "object", "outcome", "detail", "at"],
)
def test_edited_record_is_found(chained: Database, change: Callable[[dict], dict]) -> None:
    _sql(chained, update(AuditRecord).where(AuditRecord.seq == 5).values(change(_row(chained, 5))))

    assert _found(_verify(chained)) == {(5, HASH)}


def test_edited_prev_hash_is_found(chained: Database) -> None:
    _sql(chained, update(AuditRecord).where(AuditRecord.seq == 5).values(prev_hash="f" * 64))

    assert _found(_verify(chained)) == {(5, HASH), (5, BROKEN)}


def test_edited_record_with_recomputed_hash_breaks_the_next_link(chained: Database) -> None:
    forged = _row(chained, 5) | {"outcome": "denied"}
    forged["hash"] = _digest(SimpleNamespace(**forged))
    _sql(chained, update(AuditRecord).where(AuditRecord.seq == 5).values(forged))

    assert _found(_verify(chained)) == {(6, BROKEN)}


def test_deleted_middle_record_is_found(chained: Database) -> None:
    _sql(chained, delete(AuditRecord).where(AuditRecord.seq == 5))

    report = _verify(chained)
    assert _found(report) == {(6, GAP), (6, BROKEN)}
    assert report.records == N - 1


def test_deleted_last_record_is_found_through_the_head(chained: Database) -> None:
    _sql(chained, delete(AuditRecord).where(AuditRecord.seq == N))

    report = _verify(chained)
    assert _found(report) == {(N, ProblemKind.HEAD_MISMATCH)}
    assert "missing" in report.problems[0].message


def test_rewritten_head_is_found(chained: Database) -> None:
    _sql(chained, update(AuditHead).values(hash="e" * 64))

    assert _found(_verify(chained)) == {(N, ProblemKind.HEAD_MISMATCH)}


def test_deleted_head_is_found(chained: Database) -> None:
    _sql(chained, delete(AuditHead))

    assert _found(_verify(chained)) == {(N, ProblemKind.HEAD_MISSING)}


def test_cut_tail_with_rewound_head_needs_an_anchor(chained: Database) -> None:
    """The limit of an unkeyed chain: a consistent rewrite passes unless checked against a copy kept
    elsewhere."""
    kept = _verify(chained).head
    before = Checkpoint(N - 1, _row(chained, N - 1)["hash"])
    _sql(
        chained,
        delete(AuditRecord).where(AuditRecord.seq == N),
        update(AuditHead).values(seq=before.seq, hash=before.hash),
    )

    assert _verify(chained) == VerifyReport(ok=True, records=N - 1, problems=[], head=before)
    assert _found(_verify(chained, anchor=kept)) == {(N, ProblemKind.ANCHOR_MISMATCH)}
    assert _verify(chained, anchor=before).ok


def test_anchor_finds_a_rewritten_record(chained: Database) -> None:
    kept = _verify(chained).head
    _sql(chained, update(AuditRecord).where(AuditRecord.seq == N).values(hash="d" * 64))

    assert _found(_verify(chained, anchor=kept)) == {
        (N, HASH),
        (N, ProblemKind.HEAD_MISMATCH),
        (N, ProblemKind.ANCHOR_MISMATCH),
    }


def test_inserted_record_with_recomputed_hash_is_found(chained: Database) -> None:
    """A forged record slotted in at seq 6, the later ones renumbered to make room."""
    # One row at a time from the top: PostgreSQL checks the primary key after every row.
    renumber = [update(AuditRecord).where(AuditRecord.seq == s).values(seq=s + 1) for s in range(N, 5, -1)]
    forged = _row(chained, 6) | {"seq": 6, "actor": "mallory", "prev_hash": _row(chained, 5)["hash"]}
    forged["hash"] = _digest(SimpleNamespace(**forged))
    _sql(chained, *renumber, insert(AuditRecord).values(forged))

    report = _verify(chained)
    assert report.records == N + 1
    assert _found(report) == (
        {(7, BROKEN), (N, ProblemKind.HEAD_MISMATCH)} | {(s, HASH) for s in range(7, N + 2)}
    )


def test_swapped_records_are_found(chained: Database) -> None:
    fourth, fifth = (_row(chained, s) for s in (4, 5))
    _sql(
        chained,
        update(AuditRecord).where(AuditRecord.seq == 4).values({k: fifth[k] for k in _FIELDS}),
        update(AuditRecord).where(AuditRecord.seq == 5).values({k: fourth[k] for k in _FIELDS}),
    )

    assert _found(_verify(chained)) == {(4, HASH), (4, BROKEN), (5, HASH), (5, BROKEN), (6, BROKEN)}


def test_concurrent_appends_form_one_contiguous_chain(database: Database) -> None:
    threads, each = 8, 25
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def append(worker: int) -> None:
        try:
            start.wait()
            for i in range(each):
                with database.write() as session:
                    record(
                        session, actor=f"worker-{worker}", action="lease", object=f"task/{i}", outcome="ok"
                    )
        except BaseException as error:  # noqa: BLE001 - reported by the main thread below
            errors.append(error)

    workers = [threading.Thread(target=append, args=(w,)) for w in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)

    assert errors == []
    with database.read() as session:
        seqs = session.scalars(select(AuditRecord.seq).order_by(AuditRecord.seq)).all()
        per_actor = dict(
            session.execute(select(AuditRecord.actor, func.count()).group_by(AuditRecord.actor)).all()
        )
    assert seqs == list(range(1, threads * each + 1))
    assert per_actor == {f"worker-{w}": each for w in range(threads)}
    report = _verify(database)
    assert report.ok
    assert report.records == threads * each
    assert report.head is not None
    assert report.head.seq == threads * each
