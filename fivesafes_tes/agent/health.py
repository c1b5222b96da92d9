"""How a TRE's agent is doing, for the TRE's admins: when it last heard from the gateway, what work it
holds at which stage, what it has still to report, and whether its threads run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fivesafes_tes.agent.tables import LocalChild, OutgoingEvent


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
