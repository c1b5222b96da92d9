"""A cap on attempts per child (issue 10): a child whose lease is offered again, each time lost while its
task acted, ends system_failed at the TRE past FIVESAFES_AGENT_MAX_ATTEMPTS, its run removed and the
agent's audit saying why; a re-offer while it waits for people costs nothing."""

from __future__ import annotations

import uuid
from unittest import mock

import pytest
from sqlalchemy import select

from fivesafes_tes.agent.loop import Agent
from fivesafes_tes.agent.policy import TrePolicy
from fivesafes_tes.agent.tables import LocalChild, OutgoingEvent
from fivesafes_tes.audit.tables import AuditRecord
from fivesafes_tes.settings import AgentSettings
from tests import images
from tests.waiting import wait_for

docker_client = images.docker_client
busybox_image = images.busybox_image


@pytest.fixture
def agent(tmp_path):
    settings = AgentSettings(tre="uk-tre", data_dir=tmp_path, max_attempts=3, report_granularity_s=0)
    made = Agent(settings, client=mock.Mock(), executor=mock.Mock(), store=mock.Mock(), policy=TrePolicy())
    yield made
    made.db.dispose()


def _grant(attempt: int) -> dict:
    return {
        "child_id": "c1",
        "task_id": "t1",
        "attempt": attempt,
        "stage": "leased",
        "project": "alpha",
        "user": "alice",
        "task": {"executors": []},
    }


def _set_stage(agent: Agent, stage: str) -> None:
    with agent.db.write() as session:
        session.get(LocalChild, "c1").stage = stage  # type: ignore[union-attr]


def test_past_the_cap_the_child_ends_system_failed_its_run_removed_and_audited(agent):
    agent._accept(_grant(1))
    _set_stage(agent, "running")
    for attempt in (2, 3):  # the agent died with the task twice: attempts 2 and 3 are still allowed
        agent._accept(_grant(attempt))
    agent.executor.cleanup.assert_not_called()
    agent._accept(_grant(4))
    with agent.db.read() as session:
        child = session.get(LocalChild, "c1")
        last = session.scalars(select(OutgoingEvent).order_by(OutgoingEvent.seq.desc())).first()
        given_up = session.scalars(select(AuditRecord).where(AuditRecord.action == "child.give_up")).one()
    assert (child.stage, child.active, child.attempts) == ("system_failed", False, 4)
    assert (last.attempt, last.stage) == (4, "system_failed")
    agent.executor.cancel.assert_called_with("c1")
    agent.executor.cleanup.assert_called_with("c1")
    assert given_up.detail["error"].startswith("gave up after 4 attempts: each earlier one was lost while")


def test_re_offers_while_the_child_waits_for_people_do_not_count(agent):
    agent._accept(_grant(1))
    _set_stage(agent, "awaiting_review")
    for attempt in range(2, 10):
        agent._accept(_grant(attempt))
    with agent.db.read() as session:
        child = session.get(LocalChild, "c1")
    assert (child.stage, child.active, child.attempts) == ("awaiting_review", True, 1)


def test_past_the_cap_a_real_run_is_stopped_and_its_containers_removed(
    tmp_path, docker_client, busybox_image
):
    """The same give-up against Docker: the task's container, still running from the lost attempts,
    is gone afterwards, and nothing else of this TRE's is touched."""
    from fivesafes_tes.executors import LABEL_CHILD, LABEL_TRE, Limits, RunSpec, Step
    from fivesafes_tes.executors.docker import DockerExecutor

    tre, child = f"test-{uuid.uuid4().hex[:8]}", f"c{uuid.uuid4().hex[:12]}"
    executor = DockerExecutor(
        tre, deployment=f"test-{uuid.uuid4().hex}", work_dir=tmp_path / "work", client=docker_client
    )
    settings = AgentSettings(tre=tre, data_dir=tmp_path, max_attempts=2, report_granularity_s=0)
    agent = Agent(settings, client=mock.Mock(), executor=executor, store=mock.Mock(), policy=TrePolicy())
    limits = Limits(cpu_cores=0.5, memory_bytes=64 << 20, disk_bytes=8 << 20, runtime_s=600, pids=64)

    def containers() -> list:
        labels = [f"{LABEL_TRE}={tre}", f"{LABEL_CHILD}={child}"]
        return docker_client.containers.list(all=True, filters={"label": labels})

    try:
        agent._accept({**_grant(1), "child_id": child})
        _set_stage_of(agent, child, "running")
        steps = [Step(image=busybox_image, command=["sleep", "600"])]
        executor.start(
            RunSpec(
                child_id=child,
                attempt=1,
                tre=tre,
                steps=steps,
                limits=limits,
            )
        )
        wait_for(lambda: any(c.status == "running" for c in containers()), 30, "the task's container to run")
        agent._accept({**_grant(2), "child_id": child})  # lost once while running: still allowed
        assert containers(), "the run was removed before the cap"
        agent._accept({**_grant(3), "child_id": child})  # past the cap of 2
        with agent.db.read() as session:
            ended = session.get(LocalChild, child)
        assert (ended.stage, ended.active) == ("system_failed", False)
        assert containers() == [], "the task's containers outlived the give-up"
    finally:
        for container in containers():
            container.remove(force=True)
        agent.db.dispose()


def _set_stage_of(agent: Agent, child: str, stage: str) -> None:
    with agent.db.write() as session:
        session.get(LocalChild, child).stage = stage  # type: ignore[union-attr]
