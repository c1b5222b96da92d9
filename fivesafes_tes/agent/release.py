"""Release a child's approved outputs: once every held file is decided, copy the approved ones to the
gateway, verified at both ends, and end the child with its disclosure record.

Every approved file is copied out of the airlock and its SHA-256 checked before any of them leaves;
one changed file blocks the whole release and is audited.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import select

from fivesafes_tes import audit, failpoints
from fivesafes_tes.agent import review
from fivesafes_tes.agent.client import GatewayClient
from fivesafes_tes.agent.outbox import Emit
from fivesafes_tes.agent.tables import HeldFileRecord, LocalChild
from fivesafes_tes.db import Database
from fivesafes_tes.egress.held import HeldFile, LogKey
from fivesafes_tes.egress.store import ChecksumMismatch, ObjectStore, StoreUnavailable
from fivesafes_tes.submission.stages import Stage

log = logging.getLogger(__name__)


class Release:
    """What a release needs of the agent: its database, airlock, gateway, TRE name and outbox."""

    def __init__(self, db: Database, store: ObjectStore, client: GatewayClient, tre: str, emit: Emit) -> None:
        self.db = db
        self.store = store
        self.client = client
        self.tre = tre
        self.emit = emit

    def settle(self, child: LocalChild, policy: review.ReviewPolicy) -> None:
        """Once every held file is decided: copy the approved ones to the gateway, verified at both
        ends, then end the child with its disclosure record, then empty the airlock."""
        with self.db.read() as session:
            local = session.get(LocalChild, child.child_id)
            if local is None or (local.result or {}).get("blocked"):
                return
            settled = review.settle(session, child.child_id, policy)
            if settled is None:
                return
            record = review.disclosure_record(session, local, self.tre, settled, policy)
            held = {
                h.key: h
                for h in session.scalars(
                    select(HeldFileRecord).where(HeldFileRecord.child_id == child.child_id)
                )
            }
        if not (local.result or {}).get(review.RELEASING) and not self._begin(child, settled, policy):
            return
        released_logs: dict[str, str] = {}
        with tempfile.TemporaryDirectory(prefix="release-") as scratch:
            # Every approved file is copied out and verified before any of them leaves: one changed
            # file blocks the whole release.
            copies: list[HeldFile] = []
            for n, (key, decision) in enumerate(sorted(settled.files.items())):
                if decision is not review.FileOutcome.APPROVED:
                    continue
                copy = Path(scratch) / str(n)
                try:
                    self.store.get_to_file(key, copy, expect_sha256=held[key].sha256)
                except ChecksumMismatch:
                    self._block(child, held[key])
                    return
                except StoreUnavailable:
                    return  # try again on the next tick
                copies.append(replace(held[key].held, local=copy))
            failpoints.reach("release.copied")
            if copies:
                self.client.record_approvals(child.child_id, copies)
            for file in copies:
                self.client.upload_file(child.child_id, file)
                failpoints.reach("release.uploaded")
                if isinstance(file.key, LogKey):
                    released_logs[f"{file.key.step}.{file.key.stream}"] = _tail(file.path)
        outcome = (local.result or {}).get("outcome", {})
        approved = any(d is review.FileOutcome.APPROVED for d in settled.files.values())
        # Whether the run failed is said only with a release: a checker saw it (the exit codes) and
        # let something out. After a full rejection the child ends withheld either way.
        run_failed = outcome.get("outcome") not in (None, "succeeded")
        ending = Stage.EXECUTOR_FAILED if run_failed and approved else Stage(settled.outcome.value)
        with self.db.write() as session:  # the full record stays in the TRE, for its output checkers
            kept = session.get(LocalChild, child.child_id)
            assert kept is not None
            kept.result = {**(kept.result or {}), "disclosure": record}
        report: dict[str, Any] = {"disclosure": review.exported(record)}
        if approved:
            report |= {"steps": outcome.get("steps", []), "released_logs": released_logs}
        self.emit(child, ending, report=report, final=True)  # the airlock is emptied once it is sent

    def _begin(self, child: LocalChild, settled: review.Settled, policy: review.ReviewPolicy) -> bool:
        """Make the child's decisions final, unless one changed since `settled` (the next tick settles
        again): the approvals the gateway records are then the same on every try of this release."""
        with self.db.write() as session:
            if review.settle(session, child.child_id, policy) != settled:
                return False
            local = session.get(LocalChild, child.child_id)
            assert local is not None
            local.result = {**(local.result or {}), review.RELEASING: True}
        return True

    def _block(self, child: LocalChild, file: HeldFileRecord) -> None:
        """A held file no longer matches its SHA-256: nothing of this child is released, and it is audited."""
        with self.db.write() as session:
            local = session.get(LocalChild, child.child_id)
            assert local is not None
            local.result = {**(local.result or {}), "blocked": True}
            audit.record(
                session,
                actor=f"agent:{self.tre}",
                action="release.integrity",
                object=f"child:{child.child_id}",
                outcome="alert",
                detail={"name": file.name, "expected_sha256": file.sha256},
            )
        log.error("held file %s of %s changed in the airlock; release blocked", file.name, child.child_id)
        self.emit(child, Stage.AWAITING_REVIEW, report={"notice": "release_blocked"})


def _tail(path: Path, limit: int = 64 * 1024) -> str:
    """The end of a released log, for the TES view (the whole file is downloadable)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        handle.seek(max(0, size - limit))
        return handle.read().decode("utf-8", errors="replace")
