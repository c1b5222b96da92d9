"""The agent's outbox: every stage change is written here before it is sent to the gateway.

A crash between writing and sending re-sends the event with the same sequence number, so the gateway
applies it once. Events whose timing the task controls are held back to the TRE's reporting
granularity; a refused event is sent again with backoff, holding back only its own child's later ones.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import select

from fivesafes_tes import failpoints
from fivesafes_tes.agent.client import GatewayClient, Rejected
from fivesafes_tes.agent.tables import LocalChild, OutgoingEvent
from fivesafes_tes.db import Database

log = logging.getLogger(__name__)

ENDED_WITH_HELD_FILES = (
    "released",
    "partially_released",
    "withheld",
    "executor_failed",
    "canceled",
    "system_failed",
)
# A refused event is sent again after this many seconds, doubled each time up to the cap.
RETRY_FIRST_S, RETRY_CAP_S = 1.0, 300.0


class Emit(Protocol):
    """Record a child's stage change and send its event (the agent's `_emit`)."""

    def __call__(
        self,
        child: LocalChild,
        stage: str,
        message: str | None = None,
        *,
        report: dict[str, Any] | None = None,
        final: bool = False,
    ) -> None: ...


class Outbox:
    """The events this agent owes the gateway, kept in its database until the gateway takes them."""

    def __init__(
        self,
        db: Database,
        client: GatewayClient,
        *,
        granularity_s: float,
        on_canceled: Callable[[str], None],
        on_ended: Callable[[str], None],
    ) -> None:
        self.db = db
        self.client = client
        self.granularity_s = granularity_s
        self._on_canceled = on_canceled  # the gateway says the child was canceled: stop it here too
        self._on_ended = on_ended  # the gateway has a child's ending (and so every released file)

    def emit(
        self,
        child: LocalChild,
        stage: str,
        message: str | None = None,
        *,
        report: dict[str, Any] | None = None,
        final: bool = False,
    ) -> None:
        """Write the event to the outbox (so a crash re-sends it with the same seq), then send it, once due.

        From the moment the run starts, the task controls when stages change: those events are held
        back to the next multiple of the reporting granularity after that moment, so the gateway
        (outside the TRE) learns their timing only that coarsely."""
        now = time.time()
        with self.db.write() as session:
            local = session.get(LocalChild, child.child_id)
            assert local is not None
            started = (local.result or {}).get("running_since")
            if stage == "running" and started is None:
                local.result = {**(local.result or {}), "running_since": now}
            session.add(
                OutgoingEvent(
                    child_id=local.child_id,
                    attempt=local.attempt,
                    seq=local.next_seq,
                    stage=stage,
                    message=message,
                    report=report,
                    not_before=next_boundary(started, now, self.granularity_s),
                )
            )
            local.next_seq += 1
            # Errors are counted per stage: moving on starts the count again; an ending keeps it.
            if local.stage != stage and not final:
                local.errors, local.retry_at = 0, 0.0
            local.stage = stage
            if final:
                local.active = False
        child.stage = stage
        self.flush()

    def flush(self) -> None:
        """Send every due event, each child's in order: a child's event not yet due, or refused, holds
        back that child's later ones and no other child's."""
        now = time.time()
        with self.db.read() as session:
            pending = list(
                session.scalars(
                    select(OutgoingEvent)
                    .where(OutgoingEvent.sent.is_(False))
                    .order_by(OutgoingEvent.child_id, OutgoingEvent.attempt, OutgoingEvent.seq)
                )
            )
        held_back: set[str] = set()
        for event in pending:
            if event.child_id in held_back or event.not_before > now:
                held_back.add(event.child_id)
                continue
            try:
                self.client.event(
                    event.child_id, event.attempt, event.seq, event.stage, event.message, event.report
                )
            except Rejected as exc:
                if not self._void(event, exc):
                    held_back.add(event.child_id)
                    self._retry_later(event, exc)
                    continue
            with self.db.write() as session:
                row = session.get(OutgoingEvent, (event.child_id, event.attempt, event.seq))
                if row is not None:
                    row.sent = True
            if event.stage in ENDED_WITH_HELD_FILES:  # the gateway has every file and the ending
                failpoints.reach("release.final_sent")
                self._on_ended(event.child_id)

    def next_due(self) -> float | None:
        """When the first event held back (by the granularity or a retry) falls due: of each child's
        first unsent event, the earliest."""
        with self.db.read() as session:
            rows = session.execute(
                select(OutgoingEvent.child_id, OutgoingEvent.not_before)
                .where(OutgoingEvent.sent.is_(False))
                .order_by(OutgoingEvent.child_id, OutgoingEvent.attempt, OutgoingEvent.seq)
            )
            first: dict[str, float] = {}
            for child_id, not_before in rows:
                first.setdefault(child_id, not_before)
        return min(first.values(), default=None)

    def unsent(self, child_id: str) -> bool:
        """Whether an event of this child still waits to be sent."""
        with self.db.read() as session:
            query = select(OutgoingEvent.seq).where(
                OutgoingEvent.child_id == child_id, OutgoingEvent.sent.is_(False)
            )
            return session.scalar(query.limit(1)) is not None

    def _void(self, event: OutgoingEvent, exc: Rejected) -> bool:
        """Whether a refused event is void: its attempt was superseded, or the child was canceled (which
        is then stopped here too). Any other refusal is not a delivery: the event is sent again."""
        if exc.status != 409:
            return False
        if "superseded" in exc.detail:
            log.info("event %s/%s/%s dropped: %s", event.child_id, event.attempt, event.seq, exc.detail)
            return True
        if "is canceled" in exc.detail:
            self._on_canceled(event.child_id)
            return True
        return False

    def _retry_later(self, event: OutgoingEvent, exc: Rejected) -> None:
        with self.db.write() as session:
            row = session.get(OutgoingEvent, (event.child_id, event.attempt, event.seq))
            if row is None:
                return
            row.refusals += 1
            wait = min(RETRY_CAP_S, RETRY_FIRST_S * 2 ** (row.refusals - 1))
            row.not_before = time.time() + wait
        log.warning(
            "event %s/%s/%s (%s) refused (%s: %s); sending it again in %.0f s",
            event.child_id,
            event.attempt,
            event.seq,
            event.stage,
            exc.status,
            exc.detail,
            wait,
        )


def next_boundary(started: float | None, now: float, granularity_s: float) -> float:
    """The first multiple of the granularity after the run started that is not before `now`; `now`
    itself before the run (the request and the TRE's admins set that timing, not the task)."""
    if started is None or granularity_s <= 0:
        return now
    return started + granularity_s * math.ceil((now - started) / granularity_s)
