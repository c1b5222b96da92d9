"""How a TRE's agent is doing, told two ways. For the TRE's admins (`Health`, their health page):
when it last heard from the gateway, what work it holds at which stage, what it has still to report,
and whether its threads run. For the cluster's probes (`Probes`, `/healthz` and `/readyz` on the
TRE's own API): whether its threads are alive and moving, and whether it is ready; the agent's threads
set timestamps there as they go. The probes need no token, so what they say is about this process
alone: never a task, a child, a project or a count.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from fivesafes_tes.agent.tables import LocalChild, OutgoingEvent
from fivesafes_tes.db import Database


@dataclass(frozen=True)
class Health:
    tre: str
    executor: str  # the backend's name: docker, kubernetes, local
    last_contact: datetime | None  # the gateway's last answer; None before the first
    children: dict[str, int]  # active children by stage
    unsent_events: int  # stage events not yet taken by the gateway
    threads: dict[str, bool]  # each thread of the agent, and whether it runs


def backlog(session: Session) -> tuple[dict[str, int], int]:
    """Active children by stage, and the stage events not yet sent: two grouped counts."""
    stages = session.execute(
        select(LocalChild.stage, func.count()).where(LocalChild.active.is_(True)).group_by(LocalChild.stage)
    )
    unsent = session.scalar(
        select(func.count()).select_from(OutgoingEvent).where(OutgoingEvent.sent.is_(False))
    )
    return dict(stages.tuples().all()), unsent or 0


#: The thread whose stall makes the agent unhealthy: it alone changes state, so while it is stuck
#: nothing moves (the poller waits on the gateway by design, the heartbeater sleeps between beats).
WORKER = "worker"


@dataclass
class Probes:
    """When the agent's threads were last heard from (monotonic seconds).

    `stall_s`: the worker is stuck once it has not started a pass of its loop for this long (a pass
    can legitimately take as long as its slowest step, e.g. uploading a released file).
    `sync_stale_s`: the agent is not ready once its last sync with the gateway is this old."""

    stall_s: float
    sync_stale_s: float
    recovered: bool = False
    synced_at: float | None = None
    worker_beat: float | None = None
    threads: dict[str, threading.Thread] = field(default_factory=dict)

    def watch(self, name: str, thread: threading.Thread) -> None:
        """Count `thread` among those that must stay alive; the worker's clock starts now."""
        self.threads[name] = thread
        if name == WORKER:
            self.beat()

    def beat(self) -> None:
        """The worker starts a pass of its loop."""
        self.worker_beat = time.monotonic()

    def mark_recovered(self) -> None:
        self.recovered = True

    def mark_synced(self) -> None:
        self.synced_at = time.monotonic()

    def liveness(self) -> dict[str, str]:
        """`{"status": "ok", ...}` while every watched thread runs and the worker moves; otherwise
        "unavailable" and, for each check that fails, why."""
        stopped = sorted(name for name, thread in self.threads.items() if not thread.is_alive())
        checks = {"threads": f"stopped: {', '.join(stopped)}" if stopped else "ok", "worker": "ok"}
        if self.worker_beat is not None:
            quiet = time.monotonic() - self.worker_beat
            if quiet > self.stall_s:
                checks["worker"] = f"stuck: no pass started in {quiet:.0f} s (limit {self.stall_s:.0f} s)"
        return _verdict(checks)

    def readiness(self, db: Database) -> dict[str, str]:
        """`{"status": "ok", ...}` when the database answers, recovery at start is done and the last
        sync with the gateway is recent; otherwise "unavailable" and, for each check that fails, why."""
        checks = {"database": "ok", "recovery": "ok", "gateway": "ok"}
        try:
            with db.read() as session:
                session.execute(text("SELECT 1"))
        except Exception:  # noqa: BLE001  any failure means not ready; the reason is not the caller's
            checks["database"] = "unreachable"
        if not self.recovered:
            checks["recovery"] = "not finished"
        if self.synced_at is None:
            checks["gateway"] = "not synced yet"
        else:
            age = time.monotonic() - self.synced_at
            if age > self.sync_stale_s:
                checks["gateway"] = f"last synced {age:.0f} s ago (limit {self.sync_stale_s:.0f} s)"
        return _verdict(checks)


def _verdict(checks: dict[str, str]) -> dict[str, str]:
    ok = all(value == "ok" for value in checks.values())
    return {"status": "ok" if ok else "unavailable", **checks}
