"""Refused at submission what a target TRE will not run (issue 9, item 2): each agent publishes the
part of its policy that depends on the request alone, the gateway answers a task that breaks it with
400 in the TRE's own words, naming the TRE, the field and what to change, and stores nothing. A TRE
that has not published is not asked (it checks for itself), and the TRE still checks every task."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from fivesafes_tes.agent import staging
from fivesafes_tes.agent.client import GatewayClient
from fivesafes_tes.agent.loop import Agent
from fivesafes_tes.agent.policy import Dataset, TrePolicy
from fivesafes_tes.audit.tables import AuditRecord
from fivesafes_tes.settings import AgentSettings
from fivesafes_tes.submission.tables import Child, Task
from tests.test_agent_api import AGENT, TES, agent_headers

IMAGE = "registry.tre.example/stats:1"
STEP = {"image": IMAGE, "command": ["run"]}


def tre_policy(**changes) -> TrePolicy:
    return TrePolicy(**{"allowed_images": ["registry.tre.example/*"], **changes})


def publish(gw, policy: TrePolicy, tre: str = "uk-tre"):
    """What the agent of `tre` sends at every sync, built as it builds it."""
    document = staging.admission(policy, tre).model_dump(mode="json")
    return gw.client.put(f"{AGENT}/policy", json=document, headers=agent_headers(gw, tre))


def submit(gw, task: dict, tres: str = "uk-tre"):
    body = {"executors": [STEP], **task, "tags": {"tres": tres}}
    return gw.client.post(f"{TES}/tasks", json=body, headers=gw.headers())


def stored(gw) -> tuple[int, int]:
    with gw.db.read() as session:
        return session.scalar(select(func.count()).select_from(Task)), session.scalar(
            select(func.count()).select_from(Child)
        )


REFUSED = [
    pytest.param(
        {"executors": [{"image": "docker.io/library/alpine:3", "command": ["true"]}]},
        "executors.0.image: uk-tre does not allow image 'docker.io/library/alpine:3'; it runs images "
        "matching registry.tre.example/*",
        id="image",
    ),
    pytest.param(
        {"inputs": [{"path": "/in/data.csv", "url": "file:///home/alice/data.csv"}]},
        "inputs.0.url: uk-tre stages only literal content and the datasets it grants the project, and "
        "fetches no url ('file:///home/alice/data.csv'); give the file's text as the input's content",
        id="scheme",
    ),
    pytest.param(
        {"inputs": [{"path": "/.fivesafes/run.sh", "content": "echo hi"}]},
        "inputs.0.path: '/.fivesafes/run.sh' is reserved by uk-tre: the sandbox's own tools (/.fivesafes); "
        "use another folder, such as /outputs",
        id="reserved-path",
    ),
    pytest.param(
        {"volumes": ["/tmp"]},
        "volumes.0: '/tmp' is reserved by uk-tre: the task's scratch space",
        id="scratch",
    ),
    pytest.param(
        {"outputs": [{"path": "/x.csv", "url": "s3://r/x.csv"}]},
        "outputs.0.path: '/x.csv' is directly under /; put outputs in a folder, such as /outputs",
        id="under-root",
    ),
    pytest.param(
        {"executors": [STEP, STEP, STEP]},
        "executors: 3 given, uk-tre accepts at most 2",
        id="cap",
    ),
    pytest.param(
        {"executors": [{**STEP, "env": {"AWS_SECRET_ACCESS_KEY": "x"}}]},
        "executors.0.env: 'AWS_SECRET_ACCESS_KEY' is reserved by uk-tre",
        id="variable",
    ),
]


@pytest.mark.parametrize(("task", "reason"), REFUSED)
def test_a_task_the_tre_published_it_will_not_run_is_refused_and_nothing_is_stored(gateway, task, reason):
    assert publish(gateway, tre_policy(max_executors=2)).status_code == 200
    answer = submit(gateway, task)
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"].startswith(reason)
    assert stored(gateway) == (0, 0)


@pytest.mark.parametrize(("task", "reason"), REFUSED)
def test_a_tre_that_has_not_published_is_not_asked(gateway, task, reason):
    assert submit(gateway, task).status_code == 200  # the TRE checks for itself when it leases it


def test_a_task_is_accepted_once_the_policy_allows_it(gateway):
    alpine = {"executors": [{"image": "alpine:3", "command": ["true"]}]}
    publish(gateway, tre_policy())
    assert submit(gateway, alpine).status_code == 400
    assert publish(gateway, tre_policy(allowed_images=["alpine:*"])).json() == {"changed": True}
    assert submit(gateway, alpine).status_code == 200  # at once: the cached targets were dropped
    assert stored(gateway) == (1, 1)


def test_every_refusing_target_is_named_and_the_others_offered(gateway):
    publish(gateway, tre_policy(), "uk-tre")
    publish(gateway, tre_policy(allowed_images=["alpine:*"]), "sg-tre")
    alpine = {"executors": [{"image": "alpine:3", "command": ["true"]}]}
    answer = submit(gateway, alpine, tres="uk-tre|sg-tre")
    assert answer.status_code == 400
    assert answer.json()["detail"] == (
        "executors.0.image: uk-tre does not allow image 'alpine:3'; it runs images matching "
        "registry.tre.example/* (or send it only to sg-tre with the tag tres)"
    )
    assert submit(gateway, alpine, tres="sg-tre").status_code == 200


def test_paths_reserved_for_a_project_apply_to_that_projects_tasks_only(gateway):
    """Where a project's granted datasets are mounted is reserved for its tasks, not for another
    project's: there the rest of /data is the task's."""
    granted = tre_policy(datasets={"omop": Dataset(path="/srv/omop")}, grants={"beta": ["omop"]})
    assert [r.path for r in staging.admission(granted, "uk-tre").project_reserved_paths["beta"]] == [
        "/data/omop"
    ]
    publish(gateway, granted)
    task = {"outputs": [{"path": "/data/omop/x.csv", "url": "s3://r/x"}]}
    assert submit(gateway, task).status_code == 200  # alice's project alpha is granted nothing
    bob = gateway.client.post(
        f"{TES}/tasks",
        json={"executors": [STEP], **task, "tags": {"tres": "uk-tre"}},
        headers=gateway.headers("bob"),
    )
    assert bob.status_code == 400
    assert bob.json()["detail"].startswith(
        "outputs.0.path: '/data/omop' is reserved by uk-tre: dataset omop is mounted there read-only"
    )


def test_an_agent_publishes_only_for_its_own_tre_and_a_repeat_changes_nothing(gateway):
    document = staging.admission(tre_policy(), "sg-tre").model_dump(mode="json")
    other = gateway.client.put(f"{AGENT}/policy", json=document, headers=agent_headers(gateway, "uk-tre"))
    assert other.status_code == 400
    assert "publishes for 'uk-tre', not 'sg-tre'" in other.json()["detail"]
    researcher = gateway.client.put(f"{AGENT}/policy", json=document, headers=gateway.headers())
    assert researcher.status_code == 403
    assert gateway.client.put(f"{AGENT}/policy", json=document).status_code == 401
    assert publish(gateway, tre_policy()).json() == {"changed": True}
    assert publish(gateway, tre_policy()).json() == {"changed": False}
    with gateway.db.read() as session:
        published = list(session.scalars(select(AuditRecord).where(AuditRecord.action == "tre.policy")))
    assert [(r.actor, r.object, r.outcome) for r in published] == [
        ("agent:uk-tre", "tre:uk-tre", "published")
    ]


def test_the_agent_publishes_its_real_policy_and_the_gateway_refuses_in_the_tres_words(gateway, tmp_path):
    """The agent's own sync publishes; each refusal at the gateway is word for word what staging
    at the TRE says about the same task (and staging still refuses it)."""
    from fivesafes_tes.devstack import free_port, serve

    port = free_port()
    server, thread = serve(gateway.app, "127.0.0.1", port)
    policy = tre_policy(
        max_executors=2, datasets={"omop": Dataset(path=tmp_path)}, grants={"alpha": ["omop"]}
    )
    token = gateway.token("agent-uk-tre", "tre-agent", tre="uk-tre")
    agent = Agent(
        AgentSettings(tre="uk-tre", data_dir=tmp_path / "agent"),
        client=GatewayClient(f"http://127.0.0.1:{port}", lambda: token),
        executor=None,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        policy=policy,
    )
    try:
        agent.sync()
        for case in REFUSED:
            task = {"executors": [STEP], **case.values[0]}
            answer = submit(gateway, task)
            assert answer.status_code == 400, case.id
            with pytest.raises(staging.StagingRefused) as at_the_tre:
                staging.prepare(
                    task,
                    child_id="c1",
                    attempt=1,
                    tre="uk-tre",
                    project="alpha",
                    policy=policy,
                    run_as="65534:65534",
                )
            assert answer.json()["detail"] == str(at_the_tre.value), case.id
    finally:
        agent.client.close()
        server.should_exit = True
        thread.join(10)
