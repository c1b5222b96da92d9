"""One child's failure stays that child's (RELIABILITY 36, issue 9).

A refusal anywhere in a child's handling ends it with a plain reason; any other error is retried with
a doubling wait up to `max_child_errors` and then ends the child `system_failed`, its run removed and
its airlock emptied; another child of the same agent keeps moving meanwhile. The researcher reads a
reason only before the run; from `running` on, the gateway's fixed line and nothing of the error.
"""

from __future__ import annotations

import itertools
import logging
import posixpath
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from fivesafes_tes import devstack
from fivesafes_tes.agent import checks, review, staging
from fivesafes_tes.agent.loop import Agent
from fivesafes_tes.agent.tables import LocalChild
from fivesafes_tes.audit.tables import AuditRecord
from fivesafes_tes.auth import Person
from fivesafes_tes.devimages import BUSYBOX_IMAGE
from fivesafes_tes.egress import airlock
from fivesafes_tes.executors import ExecutorError, RequestRefused
from fivesafes_tes.executors.sandbox import POLICY
from tests import images
from tests.conftest import gateway_forgets_policies
from tests.test_agent_api import event, lease, submit

docker_client = images.docker_client
TES = "/ga4gh/tes/v1"
FIXED_LINE = "uk-tre: the TRE could not complete the task"
CANARY = "CANARY-7f3e"  # in every injected error: it must never reach the researcher
RETRY_S, MAX_ERRORS = 1.0, 4  # a failing child lives 1 + 2 + 4 s: time for another to move meanwhile


def _wait(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- the gateway takes system_failed from every stage an agent can send it from ----------------------


WALKS = {
    "leased": [],
    "awaiting_tre_approval": ["awaiting_tre_approval"],
    "staging": ["staging"],
    "running": ["staging", "running"],
    "checking": ["staging", "running", "checking"],
    "awaiting_review": ["staging", "running", "checking", "awaiting_review"],
}


@pytest.mark.parametrize("before", list(WALKS))
def test_the_gateway_ends_a_child_system_failed_from_every_stage_with_its_fixed_line(gateway, before):
    walk = WALKS[before]
    task_id = submit(gateway, tres="uk-tre")
    child = lease(gateway)["leases"][0]["child_id"]
    for seq, stage in enumerate(walk, start=1):
        assert event(gateway, child, 1, seq, stage).status_code == 200
    sent = event(gateway, child, 1, len(walk) + 1, "system_failed", message=f"Traceback {CANARY}")
    assert sent.status_code == 200, sent.text
    doc = gateway.client.get(
        f"{TES}/tasks/{task_id}", params={"view": "FULL"}, headers=gateway.headers()
    ).json()
    log = doc["logs"][0]
    assert doc["state"] == "SYSTEM_ERROR"
    assert log["metadata"]["stage"] == "system_failed"
    assert log["system_logs"][-1] == FIXED_LINE
    assert CANARY not in str(doc)
    assert "end_time" in log


# --- a real agent, a real gateway: a failure injected at every stage ----------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[devstack.DevStack]:
    data = tmp_path_factory.mktemp("stack")
    with devstack.start(data, agents=True, executor="local", report_granularity_s=0) as running:
        yield running


@pytest.fixture
def uk(stack, monkeypatch) -> Agent:
    agent: Agent = stack.agents["uk-tre"]
    monkeypatch.setattr(agent.settings, "child_retry_s", RETRY_S)
    monkeypatch.setattr(agent.settings, "max_child_errors", MAX_ERRORS)
    return agent


@pytest.fixture
def alice(stack) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=stack.url + TES, headers={"Authorization": f"Bearer {stack.token('alice')}"}, timeout=30
    ) as client:
        yield client


def task(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "executors": [{"image": BUSYBOX_IMAGE, "command": ["sh", "-c", "echo 1 > /outputs/n.txt"]}],
        "outputs": [{"path": "/outputs/n.txt", "url": "s3://results/n.txt"}],
        "tags": {"tres": "uk-tre"},
        **extra,
    }


def post(alice: httpx.Client, body: dict[str, Any]) -> str:
    response = alice.post("/tasks", json=body)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def view(alice: httpx.Client, task_id: str) -> dict[str, Any]:
    return alice.get(f"/tasks/{task_id}", params={"view": "FULL"}).json()


def stage_of(alice: httpx.Client, task_id: str) -> str:
    return view(alice, task_id)["logs"][0]["metadata"]["stage"]


def local(agent: Agent, task_id: str) -> LocalChild | None:
    with agent.db.read() as session:
        return session.scalars(select(LocalChild).where(LocalChild.task_id == task_id)).first()


def audit_of(agent: Agent, child_id: str) -> list[AuditRecord]:
    with agent.db.read() as session:
        return list(
            session.scalars(
                select(AuditRecord).where(AuditRecord.object == f"child:{child_id}").order_by(AuditRecord.seq)
            )
        )


def held(agent: Agent, child_id: str) -> list[str]:
    return [o.key for o in agent.store.list(airlock.held_prefix(child_id))]


class Injector:
    """Makes one named task's handling raise wherever the test wraps a call; every other child's passes."""

    def __init__(self, agent: Agent, name: str, error: Callable[[], Exception]) -> None:
        self.agent, self.name, self.error = agent, name, error

    def bad(self, child_id: str) -> bool:
        with self.agent.db.read() as session:
            child = session.get(LocalChild, child_id)
            return child is not None and child.task.get("name") == self.name

    def wrap(self, target: Any, attr: str, child_of: Callable[..., str], monkeypatch) -> None:
        real = getattr(target, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.bad(child_of(*args, **kwargs)):
                raise self.error()
            return real(*args, **kwargs)

        monkeypatch.setattr(target, attr, wrapper)


def _left_on_disk(agent: Agent, child_id: str) -> list[Path]:
    """The folders of the child still on the agent's disk: the backend's and the agent's scratch."""
    folders = [agent.settings.data_dir / kind / child_id for kind in ("work", "scratch")]
    return [folder for folder in folders if folder.exists()]


def _workspace_child(agent: Agent, path: Path) -> str:
    """The child whose workspace holds `path` (the checks read local copies made there)."""
    return path.relative_to(agent.settings.data_dir / "work").parts[0]


# Where each stage of a child's handling is broken, and which argument names the child there.
STAGES: dict[str, Callable[[Agent], tuple[Any, str, Callable[..., str]]]] = {
    "prepare": lambda a: (staging, "prepare", lambda task, **kw: kw["child_id"]),
    "executor start": lambda a: (a.executor, "start", lambda spec: spec.child_id),
    "poll": lambda a: (a.executor, "poll", lambda child_id: child_id),
    "collect": lambda a: (a.executor, "collect", lambda child_id, scratch: child_id),
    "checks": lambda a: (checks, "run", lambda files, *rest: _workspace_child(a, files[0].path)),
    "settle": lambda a: (review, "settle", lambda session, child_id, policy: child_id),
}


@pytest.mark.slow
@pytest.mark.parametrize("where", list(STAGES))
def test_an_error_at_any_stage_is_retried_then_ends_that_child_while_another_moves(
    uk, alice, monkeypatch, caplog, where
):
    caplog.set_level(logging.WARNING, logger="fivesafes_tes.agent.loop")
    name = f"bad-{where.replace(' ', '-')}"
    injector = Injector(uk, name, lambda: OSError(f"injected at {where}: {CANARY}"))
    target, attr, child_of = STAGES[where](uk)
    injector.wrap(target, attr, child_of, monkeypatch)

    bad_task = post(alice, task(name))
    bad = _wait("the bad child's first error", lambda: (c := local(uk, bad_task)) and c.errors >= 1 and c)
    if where in ("checks", "settle"):  # its outputs are in the airlock: ending it must empty that
        assert held(uk, bad.child_id)
    # It waits out its backoff; a child submitted now goes through the same agent meanwhile.
    good_task = post(alice, task(f"good-{where.replace(' ', '-')}"))
    _wait(
        "the good child to run",
        lambda: stage_of(alice, good_task) in ("running", "checking", "awaiting_review"),
    )
    now = local(uk, bad_task)
    assert now is not None, "the good child waited for the bad one"
    assert now.active, "the good child waited for the bad one"
    assert now.errors < MAX_ERRORS, "the good child waited for the bad one"

    doc = _wait("the bad child to end", lambda: (d := view(alice, bad_task))["state"] == "SYSTEM_ERROR" and d)
    log = doc["logs"][0]
    assert log["metadata"]["stage"] == "system_failed"
    assert log["system_logs"][-1] == FIXED_LINE
    assert CANARY not in str(doc)
    assert _wait("the good child held", lambda: stage_of(alice, good_task) == "awaiting_review")

    # Retried MAX_ERRORS times, each after double the wait before, then ended; all of it in the audit.
    ended = local(uk, bad_task)
    assert ended is not None
    assert not ended.active
    assert ended.stage == "system_failed"
    assert ended.errors == MAX_ERRORS
    assert CANARY in (ended.last_error or "")
    records = audit_of(uk, bad.child_id)
    errors = [r for r in records if r.action == "child.error"]
    assert [r.detail["errors"] for r in errors] == list(range(1, MAX_ERRORS + 1))
    assert [r.detail.get("retry_in_s") for r in errors] == [RETRY_S * 2**n for n in range(MAX_ERRORS - 1)] + [
        None
    ]
    assert [r.outcome for r in errors] == ["retry"] * (MAX_ERRORS - 1) + ["gave_up"]
    failed = [r for r in records if r.action == "child.fail"]
    assert len(failed) == 1
    assert CANARY in failed[0].detail["error"]
    # The waits were kept: no retry came before its time.
    gaps = [(b.at - a.at).total_seconds() for a, b in itertools.pairwise(errors)]
    assert all(gap >= RETRY_S * 2**n - 0.05 for n, gap in enumerate(gaps)), gaps
    # One line per retry, not a traceback a tick.
    mine = [r for r in caplog.records if bad.child_id in r.getMessage()]
    assert len([r for r in mine if r.levelno == logging.WARNING]) == MAX_ERRORS - 1

    # Nothing of it is left: no run, no workspace, nothing held in the airlock.
    assert bad.child_id not in uk.executor.running()
    assert not _left_on_disk(uk, bad.child_id)
    _wait("the airlock emptied", lambda: not held(uk, bad.child_id))


def test_a_refusal_before_the_run_ends_the_child_at_once_with_its_reason(uk, alice, monkeypatch):
    injector = Injector(
        uk, "refused-at-start", lambda: RequestRefused("mount target '/tmp/x' is reserved by the sandbox")
    )
    injector.wrap(uk.executor, "start", lambda spec: spec.child_id, monkeypatch)
    task_id = post(alice, task("refused-at-start"))
    doc = _wait("the refusal", lambda: (d := view(alice, task_id))["state"] == "SYSTEM_ERROR" and d)
    log = doc["logs"][0]
    assert log["metadata"]["stage"] == "rejected_by_tre"
    assert (
        log["system_logs"][-1] == "uk-tre refused the task: mount target '/tmp/x' is reserved by the sandbox"
    )
    child = local(uk, task_id)
    assert child is not None
    assert child.errors == 0
    assert [r.outcome for r in audit_of(uk, child.child_id) if r.action == "child.refuse"] == [
        "rejected_by_tre"
    ]
    assert not _left_on_disk(uk, child.child_id)


def test_a_refusal_after_the_run_started_reads_as_the_fixed_line(uk, alice, monkeypatch):
    injector = Injector(uk, "refused-at-collect", lambda: RequestRefused(f"output {CANARY} is odd"))
    injector.wrap(uk.executor, "collect", lambda child_id, scratch: child_id, monkeypatch)
    task_id = post(alice, task("refused-at-collect"))
    doc = _wait("the ending", lambda: (d := view(alice, task_id))["state"] == "SYSTEM_ERROR" and d)
    assert doc["logs"][0]["metadata"]["stage"] == "system_failed"
    assert doc["logs"][0]["system_logs"][-1] == FIXED_LINE
    assert CANARY not in str(doc)
    child = local(uk, task_id)
    assert child is not None
    assert child.errors == 0
    assert [
        CANARY in r.detail["error"] for r in audit_of(uk, child.child_id) if r.action == "child.fail"
    ] == [True]


def test_the_error_count_and_the_wait_survive_a_restart(uk, alice, monkeypatch):
    """Both live in the agent's database: a restarted agent neither resets the count nor skips the wait."""
    monkeypatch.setattr(uk.settings, "child_retry_s", 60.0)
    injector = Injector(uk, "bad-before-restart", lambda: ExecutorError(f"engine said {CANARY}"))
    injector.wrap(uk.executor, "start", lambda spec: spec.child_id, monkeypatch)
    task_id = post(alice, task("bad-before-restart"))
    before = _wait("an error", lambda: (c := local(uk, task_id)) and c.errors >= 1 and c)
    restarted = Agent(uk.settings, client=uk.client, executor=uk.executor, store=uk.store, policy=uk.policy)
    restarted.recover()
    restarted.work_once()  # its first pass leaves the child to its wait
    after = local(uk, task_id)
    assert after is not None
    assert after.active
    assert (after.errors, after.retry_at, after.stage) == (before.errors, before.retry_at, before.stage)
    assert alice.post(f"/tasks/{task_id}:cancel").status_code == 200
    _wait("the cancel", lambda: not local(uk, task_id).active)  # type: ignore[union-attr]


# --- for real: a job script where the sandbox keeps its own tools --------------------------------------


@pytest.mark.slow
def test_a_job_script_or_a_volume_in_a_reserved_path_ends_that_task_while_another_completes(
    tmp_path, docker_client, monkeypatch
):
    images.ensure_busybox_image(docker_client)
    path = f"{POLICY.tools_dir}/run.sh"  # reserved below: the sandbox's own tools
    with devstack.start(tmp_path / "stack", agents=True, executor="docker", report_granularity_s=0) as stack:
        http = httpx.Client(
            base_url=stack.url + TES, headers={"Authorization": f"Bearer {stack.token('alice')}"}, timeout=30
        )
        gateway_forgets_policies(stack, monkeypatch, "uk-tre")  # else it would refuse at submission
        refused = post(
            http,
            {
                "name": "snakejob",
                "executors": [{"image": BUSYBOX_IMAGE, "command": ["sh", path]}],
                "inputs": [{"path": path, "content": "echo hi\n"}],
                "tags": {"tres": "uk-tre"},
            },
        )
        scratch = post(http, task("scratch", volumes=[f"{posixpath.dirname(path)}/work"]))
        good = post(http, task("counts"))
        doc = _wait("the refusal", lambda: (d := view(http, refused))["state"] == "SYSTEM_ERROR" and d)
        assert doc["logs"][0]["metadata"]["stage"] == "rejected_by_tre"
        line = doc["logs"][0]["system_logs"][-1]
        assert line.startswith("uk-tre refused the task: ")
        assert path in line
        assert "reserved" in line
        assert _wait("the volume refused", lambda: stage_of(http, scratch) == "rejected_by_tre")
        _wait("the other task held", lambda: stage_of(http, good) == "awaiting_review")
        uk = stack.agents["uk-tre"]
        child = local(uk, good)
        assert child is not None
        for name in ("/outputs/n.txt", "step-0.stdout", "step-0.stderr"):
            with uk.db.write() as session:
                review.decide(
                    session,
                    child.child_id,
                    review.key_for(session, child.child_id, name),
                    Person("https://idp.tre.example", "checker", "checker"),
                    "approved",
                    reason="a count",
                )
        _wait("the other task released", lambda: view(http, good)["state"] == "COMPLETE")


def test_a_backend_that_never_hands_over_what_a_run_left_ends_that_child_while_another_completes(
    uk, alice, monkeypatch
):
    """A stage-out Job that never runs, a relayed server that never delivers: the child ends
    system_failed after FIVESAFES_AGENT_COLLECT_TIMEOUT_S, and the others go on."""
    monkeypatch.setattr(uk.settings, "collect_timeout_s", 1.0)
    real = uk.executor.collect
    stuck = Injector(uk, "never-handed-over", lambda: RuntimeError("unused"))

    def collect(child_id: str, scratch: Path) -> Any:
        return None if stuck.bad(child_id) else real(child_id, scratch)

    monkeypatch.setattr(uk.executor, "collect", collect)
    bad_id, good_id = post(alice, task("never-handed-over")), post(alice, task("fine"))
    _wait("the other task to await review", lambda: stage_of(alice, good_id) == "awaiting_review")
    doc = _wait("the ending", lambda: (d := view(alice, bad_id))["state"] == "SYSTEM_ERROR" and d)
    assert doc["logs"][0]["system_logs"][-1] == FIXED_LINE
    child = local(uk, bad_id)
    assert child is not None
    [failed] = [r for r in audit_of(uk, child.child_id) if r.action == "child.fail"]
    assert "did not hand over what the run left" in failed.detail["error"]
    assert failed.detail["stage"] == "checking"
