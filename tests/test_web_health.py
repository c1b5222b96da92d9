"""The TRE admins' health page: when the agent last heard from the gateway, the work it holds by stage,
the events it has still to report, and whether its threads run."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from fivesafes_tes.agent.health import Health
from fivesafes_tes.agent.loop import Agent
from fivesafes_tes.agent.policy import TrePolicy
from fivesafes_tes.agent.tables import LocalChild, OutgoingEvent
from fivesafes_tes.db.base import utcnow
from fivesafes_tes.settings import AgentSettings
from tests.web import sign_in, tre_site


class Gateway:
    def sync(self) -> dict[str, Any]:
        return {"projects": []}

    def publish_policy(self, admission: dict[str, Any]) -> bool:
        return False

    def push_decisions(self, body: list[dict[str, Any]]) -> None:
        pass


def test_the_agent_reports_its_last_contact_backlog_and_threads(tmp_path: Path) -> None:
    agent = Agent(
        AgentSettings(tre="uk-tre", data_dir=tmp_path, executor="local"),
        client=Gateway(),  # type: ignore[arg-type]
        executor=None,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        policy=TrePolicy(),
    )
    assert agent.health().last_contact is None
    with agent.db.write() as session:
        for n, stage in enumerate(("running", "running", "awaiting_review")):
            session.add(
                LocalChild(
                    child_id=f"c{n}", task_id="t", attempt=1, stage=stage, project="p", username="u", task={}
                )
            )
        session.add(
            LocalChild(
                child_id="done",
                task_id="t",
                attempt=1,
                stage="completed",
                project="p",
                username="u",
                task={},
                active=False,
            )
        )
        session.add(OutgoingEvent(child_id="c0", attempt=1, seq=1, stage="running"))
    before = utcnow()
    agent.sync()
    health = agent.health()
    assert health.last_contact is not None
    assert health.last_contact >= before
    assert (health.tre, health.executor) == ("uk-tre", "local")
    assert health.children == {"running": 2, "awaiting_review": 1}
    assert health.unsent_events == 1
    assert health.threads == {}  # not started


def test_the_health_page_shows_it_to_this_tres_admins_only(tmp_path: Path) -> None:
    state = Health(
        tre="uk-tre",
        executor="docker",
        last_contact=utcnow() - timedelta(seconds=42),
        children={"running": 3},
        unsent_events=2,
        threads={"agent-uk-tre-poller": True, "agent-uk-tre-worker": False},
    )
    with tre_site(
        tmp_path, health=lambda: replace(state, last_contact=utcnow() - timedelta(seconds=42))
    ) as site:
        page = sign_in(site, "uk-tre-admin").get("/tre/health")
        assert page.status_code == 200
        for shown in ("(42 s ago)", "docker", '<td>running</td><td class="num">3</td>', "stopped"):
            assert shown in page.text, shown
        assert sign_in(site, "uk-tre-checker").get("/tre/health").status_code == 403
