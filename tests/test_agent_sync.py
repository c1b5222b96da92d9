"""The agent's sync: projects refreshed from the gateway, this TRE's decisions pushed exactly once each,
and a decision made while a push is in flight kept for the next sync (never marked sent unsent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fivesafes_tes.agent import approvals
from fivesafes_tes.agent.loop import Agent
from fivesafes_tes.agent.policy import TrePolicy
from fivesafes_tes.agent.tables import LocalDecision, LocalProject
from fivesafes_tes.auth import Person
from fivesafes_tes.settings import AgentSettings

PROJECT = {
    "name": "alpha",
    "title": "Alpha",
    "members": ["alice", "carol"],
    "starts_on": None,
    "ends_on": None,
}

ADMIN = Person("https://idp.tre.example", "dora-sub", "dora")


class Gateway:
    """What sync needs of the gateway client; `during_push` runs while a push is in flight."""

    def __init__(self) -> None:
        self.pushed: list[list[dict[str, Any]]] = []
        self.during_push = lambda: None

    def sync(self) -> dict[str, Any]:
        return {"projects": [PROJECT]}

    def publish_policy(self, admission: dict[str, Any]) -> bool:
        return False

    def push_decisions(self, body: list[dict[str, Any]]) -> None:
        self.pushed.append(body)
        self.during_push()


def test_a_decision_made_during_a_push_is_sent_at_the_next_sync(tmp_path: Path) -> None:
    gateway = Gateway()
    agent = Agent(
        AgentSettings(tre="uk-tre", data_dir=tmp_path),
        client=gateway,  # type: ignore[arg-type]
        executor=None,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        policy=TrePolicy(),
    )
    agent.sync()  # the project arrives
    with agent.db.write() as session:
        assert session.get(LocalProject, "alpha") is not None
        approvals.decide(session, ADMIN, "alpha", "approved")

    def admin_decides_meanwhile() -> None:
        with agent.db.write() as session:
            approvals.decide(session, ADMIN, "alpha", "approved", username="alice")

    gateway.during_push = admin_decides_meanwhile
    agent.sync()
    assert [(d["project"], d["username"]) for d in gateway.pushed[-1]] == [("alpha", "")]
    with agent.db.read() as session:
        assert session.get(LocalDecision, ("alpha", "")).pushed
        assert not session.get(LocalDecision, ("alpha", "alice")).pushed  # not sent yet: not marked

    gateway.during_push = lambda: None
    agent.sync()
    assert [(d["project"], d["username"]) for d in gateway.pushed[-1]] == [("alpha", "alice")]
    agent.sync()
    assert len(gateway.pushed) == 2  # nothing left to send: no third push
