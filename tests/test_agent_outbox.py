"""The agent's outbox: stage changes whose timing the task controls reach the gateway only at the TRE's
reporting granularity (RELIABILITY 31's timing channel); each child's events go in order, one child's
wait never holds back another's; a refusal is not a delivery (issue 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fivesafes_tes.agent import loop, outbox
from fivesafes_tes.agent.client import Rejected
from fivesafes_tes.agent.loop import Agent
from fivesafes_tes.agent.policy import TrePolicy
from fivesafes_tes.agent.tables import LocalChild, OutgoingEvent
from fivesafes_tes.settings import AgentSettings

A, B = "01a30000-0000-7000-8000-00000000000a", "01a30000-0000-7000-8000-00000000000b"


class Clock:
    """Stands in for the `time` module in the agent's loop and outbox: the test moves time on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


class Gateway:
    """What the outbox needs of the gateway client: takes events, or refuses those the test names."""

    def __init__(self) -> None:
        self.taken: list[tuple[str, int, str]] = []
        self.refuse: dict[tuple[str, int], Rejected] = {}

    def event(self, child_id: str, attempt: int, seq: int, stage: str, *_: Any) -> dict[str, Any]:
        refusal = self.refuse.get((child_id, seq))
        if refusal is not None:
            raise refusal
        self.taken.append((child_id, seq, stage))
        return {"stage": stage, "applied": True}


class Airlock:
    """What emptying the airlock needs of the store: records which children it was emptied for."""

    def __init__(self) -> None:
        self.emptied: list[str] = []

    def delete(self, key: str) -> None:
        pass

    def delete_prefix(self, prefix: str) -> int:
        self.emptied.append(prefix)
        return 0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(outbox, "time", clock)
    return clock


@pytest.fixture
def agent(tmp_path: Path, clock: Clock) -> Agent:
    agent = Agent(
        AgentSettings(tre="uk-tre", data_dir=tmp_path, report_granularity_s=10),
        client=Gateway(),  # type: ignore[arg-type]
        executor=None,  # type: ignore[arg-type]
        store=Airlock(),  # type: ignore[arg-type]
        policy=TrePolicy(),
    )
    with agent.db.write() as session:
        for child_id in (A, B):
            session.add(
                LocalChild(
                    child_id=child_id,
                    task_id="t",
                    attempt=1,
                    stage="staging",
                    project="alpha",
                    username="alice",
                    task={},
                )
            )
    return agent


def emit(agent: Agent, child_id: str, stage: str, **kwargs: Any) -> None:
    with agent.db.read() as session:
        child = session.get(LocalChild, child_id)
    agent._emit(child, stage, **kwargs)


def taken(agent: Agent, child_id: str) -> list[str]:
    return [stage for c, _, stage in agent.client.taken if c == child_id]  # type: ignore[attr-defined]


def unsent(agent: Agent) -> list[tuple[str, int]]:
    with agent.db.read() as session:
        rows = session.query(OutgoingEvent).filter(OutgoingEvent.sent.is_(False)).order_by(OutgoingEvent.seq)
        return [(e.child_id, e.seq) for e in rows]


def test_stage_changes_after_the_run_starts_reach_the_gateway_only_at_the_granularity(agent, clock):
    emit(agent, A, "running")  # the request and the TRE set this moment, not the task: sent at once
    assert taken(agent, A) == ["running"]
    clock.now = 1003.2  # the run ends after 3.2 s
    emit(agent, A, "checking")
    clock.now = 1004.0
    emit(agent, B, "awaiting_tre_approval")  # another child's event is not held back meanwhile
    assert taken(agent, B) == ["awaiting_tre_approval"]
    clock.now = 1007.5
    emit(agent, A, "awaiting_review")
    assert agent.outbox.next_due() == 1010.0
    clock.now = 1009.99
    agent.outbox.flush()
    assert taken(agent, A) == ["running"]  # nothing before the boundary
    clock.now = 1010.0
    agent.outbox.flush()
    assert taken(agent, A) == ["running", "checking", "awaiting_review"]  # both at once, in order
    clock.now = 1031.0  # decided after review: the ending waits for the next boundary too
    emit(agent, A, "withheld", final=True)
    assert taken(agent, A)[-1] == "awaiting_review"
    assert agent.outbox.next_due() == 1040.0
    assert agent.store.emptied == []  # the held files stay until the gateway has the ending
    clock.now = 1040.0
    agent.outbox.flush()
    assert taken(agent, A)[-1] == "withheld"
    assert unsent(agent) == []
    assert len(agent.store.emptied) == 1


def test_a_refused_event_is_sent_again_with_backoff_and_holds_back_only_its_own_child(agent, clock):
    gateway: Gateway = agent.client  # type: ignore[assignment]
    gateway.refuse[(A, 0)] = Rejected(409, "ending withheld needs the disclosure record in the report")
    emit(agent, A, "running")
    emit(agent, A, "checking")  # a later event of the same child never overtakes the refused one
    emit(agent, B, "running")
    assert taken(agent, A) == []
    assert taken(agent, B) == ["running"]
    assert unsent(agent) == [(A, 0), (A, 1)]  # a refusal is not a delivery
    waits = []
    for _ in range(12):
        due = agent.outbox.next_due()
        waits.append(due - clock.now)
        clock.now = due
        agent.outbox.flush()
    assert waits[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(waits) == outbox.RETRY_CAP_S
    del gateway.refuse[(A, 0)]
    clock.now = agent.outbox.next_due()
    agent.outbox.flush()
    assert taken(agent, A) == ["running", "checking"]
    assert unsent(agent) == []


@pytest.mark.parametrize(
    ("detail", "cancels"),
    [
        ("attempt 1 of child x was superseded by attempt 2", False),
        ("child x is canceled; it cannot move to running", True),
    ],
)
def test_an_event_of_void_work_is_dropped(agent, clock, detail, cancels):
    agent.client.refuse[(A, 0)] = Rejected(409, detail)  # type: ignore[attr-defined]
    emit(agent, A, "running")
    assert unsent(agent) == []
    assert (not agent.inbox.empty()) is cancels
