"""The agent protocol: leases, attempts, events, cancellations, TRE isolation.
RELIABILITY 7 (legal transitions only), 8 (lease expiry and attempts), 9 (replays), 30 (TRE isolation)."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from datetime import timedelta

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from fivesafes_tes import devstack
from fivesafes_tes.audit.tables import AuditRecord
from fivesafes_tes.db.base import utcnow
from fivesafes_tes.gateway.context import app_context
from fivesafes_tes.submission import leases, results
from fivesafes_tes.submission.stages import TRANSITIONS, Stage, derive_parent_state
from fivesafes_tes.submission.tables import Child, Project, ReleasedFile, Tre, TreDecision
from fivesafes_tes.tes import State
from tests.waiting import wait_for

TES = "/ga4gh/tes/v1"
AGENT = "/agent/v1"


def agent_headers(gateway, tre="uk-tre"):
    return {"Authorization": f"Bearer {gateway.token(f'agent-{tre}', 'tre-agent', tre=tre)}"}


def submit(gateway, user="alice", **tags) -> str:
    body = {"executors": [{"image": "alpine", "command": ["true"]}], "tags": tags}
    response = gateway.client.post(f"{TES}/tasks", json=body, headers=gateway.headers(user))
    assert response.status_code == 200, response.text
    return response.json()["id"]


def lease(gateway, tre="uk-tre", wait_s=0):
    response = gateway.client.post(
        f"{AGENT}/leases", json={"wait_s": wait_s}, headers=agent_headers(gateway, tre)
    )
    assert response.status_code == 200, response.text
    return response.json()


def event(gateway, child_id, attempt, seq, stage, tre="uk-tre", **extra):
    return gateway.client.post(
        f"{AGENT}/children/{child_id}/events",
        json={"attempt": attempt, "seq": seq, "stage": stage, **extra},
        headers=agent_headers(gateway, tre),
    )


def state(gateway, task_id, user="alice"):
    return gateway.client.get(f"{TES}/tasks/{task_id}", headers=gateway.headers(user)).json()["state"]


def stages(gateway, task_id):
    doc = gateway.client.get(
        f"{TES}/tasks/{task_id}", params={"view": "BASIC"}, headers=gateway.headers()
    ).json()
    return {log["metadata"]["tre"]: log["metadata"]["stage"] for log in doc["logs"]}


def test_lease_hands_out_new_work_once_with_attempt_1(gateway):
    task_id = submit(gateway, tres="uk-tre")
    got = lease(gateway)
    assert len(got["leases"]) == 1
    assert got["cancel"] == []
    grant = got["leases"][0]
    assert grant["task_id"] == task_id
    assert grant["attempt"] == 1
    assert grant["stage"] == "leased"
    assert grant["project"] == "alpha"
    assert grant["user"] == "alice"
    # who submitted, as the TRE compares people: issuer and subject (the dev issuer's sub is the name)
    assert (grant["user_issuer"], grant["user_subject"]) == (gateway.issuer.issuer_url, "alice")
    assert grant["task"]["executors"][0]["image"] == "alpine"
    created = gateway.client.get(
        f"{TES}/tasks/{task_id}", params={"view": "BASIC"}, headers=gateway.headers("alice")
    ).json()["creation_time"]
    assert grant["created_at"] == created
    assert grant["request"] is None  # a bare TES task; a request crate's comes too (test_crate_e2e)
    assert lease(gateway)["leases"] == []
    assert stages(gateway, task_id) == {"uk-tre": "leased"}
    assert state(gateway, task_id) == "QUEUED"


def test_parent_state_follows_children_through_every_stage(gateway):
    task_id = submit(gateway)  # both TREs
    uk = lease(gateway, "uk-tre")["leases"][0]
    walk = [
        ("staging", "QUEUED"),
        ("running", "QUEUED"),
        ("checking", "QUEUED"),
        ("awaiting_review", "QUEUED"),
    ]
    for seq, (stage, parent) in enumerate(walk, start=1):
        assert event(gateway, uk["child_id"], 1, seq, stage).json() == {"stage": stage, "applied": True}
        assert state(gateway, task_id) == parent  # sg-tre still `received`: the furthest behind
    sg = lease(gateway, "sg-tre")["leases"][0]
    for seq, (stage, parent) in enumerate(
        [
            ("staging", "INITIALIZING"),
            ("running", "RUNNING"),
            ("checking", "RUNNING"),
            ("awaiting_review", "RUNNING"),
        ],
        start=1,
    ):
        event(gateway, sg["child_id"], 1, seq, stage, tre="sg-tre")
        assert state(gateway, task_id) == parent
    assert stages(gateway, task_id) == {"sg-tre": "awaiting_review", "uk-tre": "awaiting_review"}


def test_rejection_by_a_tre_reads_as_system_error_with_a_plain_line(gateway):
    task_id = submit(gateway, tres="uk-tre")
    grant = lease(gateway)["leases"][0]
    event(
        gateway,
        grant["child_id"],
        1,
        1,
        "awaiting_tre_approval",
        message="waiting for uk-tre to approve alice",
    )
    assert state(gateway, task_id) == "QUEUED"
    line = "uk-tre rejected project alpha: ethics approval lapsed"
    assert event(gateway, grant["child_id"], 1, 2, "rejected_by_tre", message=line).status_code == 200
    doc = gateway.client.get(
        f"{TES}/tasks/{task_id}", params={"view": "FULL"}, headers=gateway.headers()
    ).json()
    assert doc["state"] == "SYSTEM_ERROR"
    assert line in doc["logs"][0]["system_logs"]
    assert "end_time" in doc["logs"][0]


def test_replayed_event_has_no_second_effect(gateway):
    submit(gateway, tres="uk-tre")
    grant = lease(gateway)["leases"][0]
    first = event(gateway, grant["child_id"], 1, 1, "staging", message="staging inputs")
    again = event(gateway, grant["child_id"], 1, 1, "staging", message="staging inputs")
    assert first.json()["applied"] is True
    assert again.json() == {"stage": "staging", "applied": False}
    with gateway.db.read() as session:
        assert (
            session.scalar(
                select(func.count()).select_from(AuditRecord).where(AuditRecord.action == "child.stage")
            )
            == 1
        )
        child = session.get(Child, grant["child_id"])
        assert child.system_logs.count("staging inputs") == 1


def test_reordered_events_apply_once_each_in_a_legal_order(gateway):
    submit(gateway, tres="uk-tre")
    child = lease(gateway)["leases"][0]["child_id"]
    early = event(gateway, child, 1, 2, "running")  # arrives before its predecessor
    assert early.status_code == 409
    assert "leased" in early.json()["detail"]
    assert event(gateway, child, 1, 1, "staging").json()["applied"] is True
    assert event(gateway, child, 1, 2, "running").json()["applied"] is True  # the agent's retry
    assert event(gateway, child, 1, 2, "running").json()["applied"] is False


def test_expired_lease_is_reoffered_with_the_next_attempt_and_old_attempt_is_refused(gateway):
    submit(gateway, tres="uk-tre")
    grant = lease(gateway)["leases"][0]
    event(gateway, grant["child_id"], 1, 1, "staging")
    with gateway.db.write() as session:
        tre = session.scalar(select(Tre).where(Tre.name == "uk-tre"))
        later = utcnow() + timedelta(seconds=gateway.settings.lease_ttl_s + 1)
        regrant = leases.lease(session, tre, limit=10, ttl_s=60, now=later)
    assert [(g.child_id, g.attempt, g.stage) for g in regrant] == [(grant["child_id"], 2, "staging")]
    late = event(gateway, grant["child_id"], 1, 2, "running")
    assert late.status_code == 409
    assert "superseded" in late.json()["detail"]
    assert event(gateway, grant["child_id"], 2, 1, "running").json()["applied"] is True
    beats = gateway.client.post(
        f"{AGENT}/heartbeat",
        json={"children": [{"child_id": grant["child_id"], "attempt": 1}]},
        headers=agent_headers(gateway),
    ).json()
    assert beats == {"children": {grant["child_id"]: "stale"}}


def _lease_later(gateway, expiries: int):
    """What the gateway hands out once the lease has expired `expiries` times over (no heartbeat)."""
    with gateway.db.write() as session:
        tre = session.scalar(select(Tre).where(Tre.name == "uk-tre"))
        later = utcnow() + expiries * timedelta(seconds=gateway.settings.lease_ttl_s + 1)
        return leases.lease(
            session, tre, limit=10, ttl_s=gateway.settings.lease_ttl_s, max_lost_leases=3, now=later
        )


def test_a_child_whose_agent_dies_every_time_it_runs_is_given_up(gateway):
    task_id = submit(gateway, tres="uk-tre")
    grant = lease(gateway)["leases"][0]
    child = grant["child_id"]
    event(gateway, child, 1, 1, "staging")
    event(gateway, child, 1, 2, "running")
    assert [g.attempt for g in _lease_later(gateway, 1)] == [2]  # lost once: offered again
    assert [g.attempt for g in _lease_later(gateway, 2)] == [3]  # twice: and again
    assert _lease_later(gateway, 3) == []  # the third time it is given up
    assert stages(gateway, task_id) == {"uk-tre": "system_failed"}
    doc = gateway.client.get(f"{TES}/tasks/{task_id}?view=FULL", headers=gateway.headers()).json()
    assert doc["state"] == "SYSTEM_ERROR"
    assert doc["logs"][0]["system_logs"][-1] == "uk-tre: the TRE could not complete the task"
    gave_up = _audited(gateway, "child.give_up")
    assert [(r.object, r.detail) for r in gave_up] == [
        (f"child:{child}", {"from": "running", "attempt": 3, "lost_leases": 3})
    ]
    beats = gateway.client.post(
        f"{AGENT}/heartbeat",
        json={"children": [{"child_id": child, "attempt": 3}]},
        headers=agent_headers(gateway),
    ).json()
    assert beats == {"children": {child: "ended"}}  # its agent, if it comes back, stops it


def test_a_child_waiting_on_people_is_offered_again_however_often_its_agent_was_down(gateway):
    submit(gateway, tres="uk-tre")
    child = lease(gateway)["leases"][0]["child_id"]
    event(gateway, child, 1, 1, "awaiting_tre_approval")
    for n in range(1, 6):
        assert [(g.child_id, g.attempt) for g in _lease_later(gateway, n)] == [(child, n + 1)]


def test_heartbeat_keeps_a_lease_alive(gateway):
    submit(gateway, tres="uk-tre")
    grant = lease(gateway)["leases"][0]
    with gateway.db.read() as session:
        before = session.get(Child, grant["child_id"]).lease_expires_at
    granted = before - timedelta(seconds=gateway.settings.lease_ttl_s)
    wait_for(lambda: utcnow().replace(tzinfo=None) > granted.replace(tzinfo=None), 5, "the clock to move on")
    beats = gateway.client.post(
        f"{AGENT}/heartbeat",
        json={"children": [{"child_id": grant["child_id"], "attempt": 1}]},
        headers=agent_headers(gateway),
    ).json()
    assert beats["children"][grant["child_id"]] == "ok"
    with gateway.db.read() as session:
        assert session.get(Child, grant["child_id"]).lease_expires_at > before


def test_cancel_is_delivered_with_leases_until_acknowledged(gateway):
    task_id = submit(gateway, tres="uk-tre")
    grant = lease(gateway)["leases"][0]
    event(gateway, grant["child_id"], 1, 1, "staging")
    event(gateway, grant["child_id"], 1, 2, "running")
    gateway.client.post(f"{TES}/tasks/{task_id}:cancel", headers=gateway.headers())
    assert state(gateway, task_id) == "CANCELED"
    delivered = lease(gateway)
    assert delivered["cancel"] == [{"child_id": grant["child_id"], "attempt": 1}]
    assert lease(gateway)["cancel"] == delivered["cancel"]  # at least once, until acknowledged
    late = event(gateway, grant["child_id"], 1, 3, "checking")
    assert late.status_code == 409
    assert "canceled" in late.json()["detail"]
    beats = gateway.client.post(
        f"{AGENT}/heartbeat",
        json={"children": [{"child_id": grant["child_id"], "attempt": 1}]},
        headers=agent_headers(gateway),
    ).json()
    assert beats["children"][grant["child_id"]] == "canceled"
    gateway.client.post(f"{AGENT}/children/{grant['child_id']}/cancel-ack", headers=agent_headers(gateway))
    assert lease(gateway)["cancel"] == []


def test_a_child_never_leased_needs_no_cancel_delivery(gateway):
    task_id = submit(gateway, tres="uk-tre")
    gateway.client.post(f"{TES}/tasks/{task_id}:cancel", headers=gateway.headers())
    assert lease(gateway) == {"leases": [], "cancel": []}


def test_an_agent_of_one_tre_cannot_see_or_touch_another_tres_work(gateway):
    sg_task = submit(gateway, tres="sg-tre")
    uk_task = submit(gateway, tres="uk-tre")
    assert [g["task_id"] for g in lease(gateway, "uk-tre")["leases"]] == [uk_task]  # sg's work is not offered
    sg = lease(gateway, "sg-tre")["leases"][0]
    assert sg["task_id"] == sg_task
    assert event(gateway, sg["child_id"], 1, 1, "staging", tre="uk-tre").status_code == 404
    assert stages(gateway, sg_task) == {"sg-tre": "leased"}
    beats = gateway.client.post(
        f"{AGENT}/heartbeat",
        json={"children": [{"child_id": sg["child_id"], "attempt": 1}]},
        headers=agent_headers(gateway, "uk-tre"),
    ).json()
    assert beats["children"][sg["child_id"]] == "unknown"
    assert (
        gateway.client.post(
            f"{AGENT}/children/{sg['child_id']}/cancel-ack", headers=agent_headers(gateway, "uk-tre")
        ).status_code
        == 404
    )
    synced = gateway.client.get(f"{AGENT}/sync", headers=agent_headers(gateway, "sg-tre")).json()
    assert [p["name"] for p in synced["projects"]] == ["alpha"]  # beta runs in uk-tre only


def test_decisions_are_recorded_once_and_only_for_the_tres_own_projects(gateway):
    body = {
        "decisions": [
            {
                "project": "alpha",
                "decision": "approved",
                "decided_by": "tre-admin-1",
                "decided_at": "2026-11-23T10:00:00Z",
            },
            {
                "project": "alpha",
                "username": "alice",
                "decision": "rejected",
                "reason": "no training",
                "decided_by": "tre-admin-1",
                "decided_at": "2026-11-23T10:00:00Z",
            },
        ]
    }
    first = gateway.client.post(f"{AGENT}/decisions", json=body, headers=agent_headers(gateway, "sg-tre"))
    assert first.json() == {"changed": 2}
    assert gateway.client.post(
        f"{AGENT}/decisions", json=body, headers=agent_headers(gateway, "sg-tre")
    ).json() == {"changed": 0}
    foreign = {
        "decisions": [{"project": "beta", "decision": "approved", "decided_at": "2026-11-23T10:00:00Z"}]
    }
    assert (
        gateway.client.post(
            f"{AGENT}/decisions", json=foreign, headers=agent_headers(gateway, "sg-tre")
        ).status_code
        == 404
    )
    with gateway.db.read() as session:
        stored = session.execute(
            select(Tre.name, Project.name, TreDecision.username, TreDecision.decision)
            .join(Tre, Tre.id == TreDecision.tre_id)
            .join(Project, Project.id == TreDecision.project_id)
        ).all()
    assert sorted(stored) == [("sg-tre", "alpha", "", "approved"), ("sg-tre", "alpha", "alice", "rejected")]


def test_long_poll_returns_as_soon_as_work_arrives(database_url, tmp_path, monkeypatch):
    # No re-read of the database during the 20 s wait: only the submission's notify can end it early.
    monkeypatch.setenv("FIVESAFES_LEASE_RECHECK_S", "30")
    with devstack.start(tmp_path / "live", database_url=database_url) as stack:
        agent = {"Authorization": f"Bearer {stack.token('agent', 'tre-agent', tre='uk-tre')}"}
        result: dict = {}

        def poll() -> None:
            started = time.monotonic()
            response = httpx.post(
                f"{stack.url}{AGENT}/leases", json={"wait_s": 20}, headers=agent, timeout=30
            )
            result["leases"], result["after"] = response.json()["leases"], time.monotonic() - started

        poller = threading.Thread(target=poll)
        poller.start()
        signal = app_context(stack.server.config.app).signal
        deadline = time.monotonic() + 10
        while not any(signal._waiters.values()):  # the long poll is open and waiting
            assert time.monotonic() < deadline, "the long poll never started waiting"
            time.sleep(0.01)
        httpx.post(
            f"{stack.url}{TES}/tasks",
            json={"executors": [{"image": "a", "command": ["b"]}], "tags": {"tres": "uk-tre"}},
            headers={"Authorization": f"Bearer {stack.token('alice')}"},
            timeout=30,
        )
        poller.join(timeout=25)
        assert len(result["leases"]) == 1
        assert result["after"] < 5  # woke on the submission, not at the end of the 20 s wait


# --- the transition table as a property ------------------------------------------------------


def test_derive_parent_state_follows_the_design_table():
    S = Stage
    assert derive_parent_state([S.RECEIVED, S.RUNNING]) is State.QUEUED
    assert derive_parent_state([S.STAGING, S.AWAITING_REVIEW]) is State.INITIALIZING
    assert derive_parent_state([S.AWAITING_REVIEW, S.RELEASED]) is State.RUNNING
    assert derive_parent_state([S.AWAITING_REVIEW], paused_for_review=True) is State.PAUSED
    assert derive_parent_state([S.RELEASED, S.WITHHELD]) is State.COMPLETE
    assert derive_parent_state([S.PARTIALLY_RELEASED, S.CANCELED]) is State.COMPLETE
    assert derive_parent_state([S.CANCELED, S.CANCELED]) is State.CANCELED
    assert derive_parent_state([S.EXECUTOR_FAILED, S.EXECUTOR_FAILED]) is State.EXECUTOR_ERROR
    assert derive_parent_state([S.EXECUTOR_FAILED, S.CANCELED]) is State.SYSTEM_ERROR
    assert derive_parent_state([S.REJECTED_BY_TRE, S.WITHHELD]) is State.SYSTEM_ERROR


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(moves=st.lists(st.tuples(st.sampled_from(list(Stage)), st.integers(1, 3)), max_size=25))
def test_only_legal_transitions_are_ever_stored(database, moves):
    """Whatever an agent sends, in whatever order, a child's stored stages form a legal path and an
    ended child stays ended (RELIABILITY 7)."""
    from fivesafes_tes.submission.ids import new_task_id
    from fivesafes_tes.submission.tables import Task

    with database.write() as session:
        tre = session.scalar(select(Tre).where(Tre.name == "uk-tre"))
        if tre is None:
            tre = Tre(name="uk-tre")
            session.add(tre)
            session.flush()
        task = Task(id=new_task_id(), owner_id=_user(session), state="QUEUED", document={})
        session.add(task)
        session.flush()
        child = Child(id=new_task_id(), task_id=task.id, tre_id=tre.id, stage="received", attempt=1)
        session.add(child)
        child_id, tre_id = child.id, tre.id
    path = [Stage.RECEIVED]
    for seq, (stage, attempt) in enumerate(moves):
        # (an ending with a release needs a disclosure record, which these bare events do not carry)
        legal = (
            attempt == 1 and stage in TRANSITIONS.get(path[-1], ()) and stage not in leases.RELEASE_ENDINGS
        )
        with database.write() as session:
            tre = session.get(Tre, tre_id)
            with contextlib.suppress(leases.StaleAttempt, leases.IllegalTransition):
                leases.record_event(session, tre, child_id, attempt=attempt, seq=seq, stage=stage)
            stored = Stage(session.get(Child, child_id).stage)
        if legal:  # a legal move of the current attempt is stored: the property is not vacuous
            assert stored is stage, (path, stage, stored)
        if stored is not path[-1]:
            assert stored in TRANSITIONS[path[-1]], (path, stored)
            path.append(stored)
    assert all(not s.is_final for s in path[:-1])  # nothing ever left an ended stage


def _user(session) -> int:
    from fivesafes_tes.auth.tables import User

    user = session.scalar(select(User).where(User.username == "prop"))
    if user is None:
        user = User(issuer="i", subject="prop", username="prop", roles=[])
        session.add(user)
        session.flush()
    return user.id


def test_siblings_reporting_at_once_leave_the_parent_in_the_right_state(database_url, tmp_path):
    """Eight TREs report `running` for one task at the same moment: the parent must read RUNNING
    (each event derives it under a lock on the parent; without it the last writer stores a stale state)."""
    import concurrent.futures

    from fivesafes_tes.db import Database
    from fivesafes_tes.submission import federation

    tres = [f"tre-{n}" for n in range(8)]
    with devstack.start(tmp_path / "live", database_url=database_url) as stack:
        db = Database(database_url)
        with db.write() as session:
            for tre in tres:
                federation.add_tre(session, "test", tre)
            federation.add_project(session, "test", "wide", tres=tres)
            federation.add_member(session, "test", "wide", "alice")
        db.dispose()
        alice = {"Authorization": f"Bearer {stack.token('alice')}"}
        task_id = httpx.post(
            f"{stack.url}{TES}/tasks",
            headers=alice,
            timeout=30,
            json={"executors": [{"image": "a", "command": ["b"]}], "tags": {"project": "wide"}},
        ).json()["id"]
        agents = {
            tre: {"Authorization": f"Bearer {stack.token('agent-' + tre, 'tre-agent', tre=tre)}"}
            for tre in tres
        }
        grants = {
            tre: httpx.post(
                f"{stack.url}{AGENT}/leases", json={"wait_s": 0}, headers=agents[tre], timeout=30
            ).json()["leases"][0]
            for tre in tres
        }

        def report(tre: str, seq: int, stage: str) -> int:
            return httpx.post(
                f"{stack.url}{AGENT}/children/{grants[tre]['child_id']}/events",
                headers=agents[tre],
                json={"attempt": 1, "seq": seq, "stage": stage},
                timeout=30,
            ).status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda t: report(t, 1, "staging"), tres)) == {200}
            assert set(pool.map(lambda t: report(t, 2, "running"), tres)) == {200}
        state = httpx.get(f"{stack.url}{TES}/tasks/{task_id}", headers=alice, timeout=30).json()["state"]
        assert state == "RUNNING"


# --- released files: what the gateway keeps --------------------------------------------------------


@pytest.fixture
def releasing(database_url, tmp_path, s3_endpoint):
    from tests.conftest import Gateway, results_store_settings

    bucket = s3_endpoint.store()
    gw = Gateway(database_url, tmp_path / "data", **results_store_settings(s3_endpoint, bucket.bucket))
    yield gw, bucket
    gw.close()


def upload(gateway, child_id, data, *, sha256=None, headers=None, name="/outputs/counts.csv"):
    return gateway.client.put(
        f"{AGENT}/children/{child_id}/files",
        params={
            "name": name,
            "kind": "output",
            "sha256": sha256 or hashlib.sha256(data).hexdigest(),
            "size": len(data),
        },
        content=data,
        headers=headers or agent_headers(gateway),
    )


def approved(name: str, data: bytes) -> dict:
    return {"name": name, "kind": "output", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def approve(gateway, child_id, files: dict[str, bytes], tre="uk-tre"):
    """Record the child's approvals, as an agent does before uploading (name -> content)."""
    return gateway.client.put(
        f"{AGENT}/children/{child_id}/approvals",
        json={"files": [approved(name, data) for name, data in files.items()]},
        headers=agent_headers(gateway, tre),
    )


def test_the_gateway_keeps_a_released_file_only_from_its_tre_in_review_and_intact(releasing):
    gateway, bucket = releasing
    task_id = submit(gateway, tres="uk-tre")
    child = lease(gateway)["leases"][0]["child_id"]
    data = b"region,n_patients\nnorth,120\n"
    assert event(gateway, child, 1, 1, "staging").status_code == 200
    assert upload(gateway, child, data).status_code == 409  # not awaiting review: nothing to release yet
    assert approve(gateway, child, {"/outputs/counts.csv": data}).status_code == 409
    for seq, stage in enumerate(("running", "checking", "awaiting_review"), start=2):
        assert event(gateway, child, 1, seq, stage).status_code == 200
    assert approve(gateway, child, {"/outputs/counts.csv": data}).json() == {"recorded": True, "files": 1}
    assert upload(gateway, child, data, headers=agent_headers(gateway, "sg-tre")).status_code == 404
    assert upload(gateway, child, data, headers=gateway.headers("alice")).status_code == 403
    damaged = upload(
        gateway, child, b"region,n_patients\nnorth,121\n", sha256=hashlib.sha256(data).hexdigest()
    )
    assert damaged.status_code == 422  # approved name, SHA-256 and size; the bytes changed on the way
    assert list(bucket.list("")) == []  # nothing stored from any refused upload
    with gateway.db.read() as session:
        alerts = session.scalar(
            select(func.count()).select_from(AuditRecord).where(AuditRecord.action == "release.integrity")
        )
    assert alerts == 1

    first = upload(gateway, child, data)
    assert first.status_code == 200
    assert first.json()["stored"] is True
    again = upload(gateway, child, data)  # a retried upload: kept once
    assert again.status_code == 200
    assert again.json()["stored"] is False
    assert (
        upload(gateway, child, b"region,n_patients\nnorth,3\n").status_code == 403
    )  # same name, other bytes: not what was approved
    [stored] = list(bucket.list(""))
    assert bucket.get_bytes(stored.key) == data
    assert stages(gateway, task_id) == {"uk-tre": "awaiting_review"}


def _in_review(gateway) -> str:
    submit(gateway, tres="uk-tre")
    child = lease(gateway)["leases"][0]["child_id"]
    for seq, stage in enumerate(("staging", "running", "checking", "awaiting_review"), start=1):
        assert event(gateway, child, 1, seq, stage).status_code == 200
    return child


def _audited(gateway, action):
    with gateway.db.read() as session:
        return list(
            session.scalars(select(AuditRecord).where(AuditRecord.action == action).order_by(AuditRecord.seq))
        )


def test_an_upload_outside_the_recorded_approvals_is_refused_audited_and_not_stored(releasing):
    gateway, bucket = releasing
    child = _in_review(gateway)
    counts, extract = b"region,n\nnorth,120\n", b"person_id\n1001\n"
    nothing_yet = upload(gateway, child, counts)
    assert nothing_yet.status_code == 403
    assert "no approvals were recorded" in nothing_yet.json()["detail"]
    assert approve(gateway, child, {"/outputs/counts.csv": counts}).status_code == 200
    refused = [
        upload(gateway, child, extract, name="/outputs/extract.csv"),  # never approved
        upload(gateway, child, extract, name="/outputs/counts.csv"),  # the approved name, other bytes
    ]
    assert [r.status_code for r in refused] == [403, 403]
    assert "not among the files approved" in refused[1].json()["detail"]
    assert list(bucket.list("")) == []
    with gateway.db.read() as session:
        assert session.scalar(select(func.count()).select_from(ReleasedFile)) == 0
    audited = [
        (r.object, r.outcome, r.detail["name"], r.detail["sha256"])
        for r in _audited(gateway, "release.refused")
    ]
    assert audited == [
        (f"child:{child}", "refused", "/outputs/counts.csv", hashlib.sha256(counts).hexdigest()),
        (f"child:{child}", "refused", "/outputs/extract.csv", hashlib.sha256(extract).hexdigest()),
        (f"child:{child}", "refused", "/outputs/counts.csv", hashlib.sha256(extract).hexdigest()),
    ]
    assert upload(gateway, child, counts, name="/outputs/counts.csv").status_code == 200


def test_approvals_are_recorded_once_by_the_childs_own_tre_and_never_change(releasing):
    gateway, _ = releasing
    child = _in_review(gateway)
    files = {"/outputs/counts.csv": b"region,n\nnorth,120\n", "/outputs/notes.txt": b"two regions\n"}
    assert approve(gateway, child, files, tre="sg-tre").status_code == 404  # another TRE's child
    researcher = gateway.client.put(
        f"{AGENT}/children/{child}/approvals",
        json={"files": [approved(n, d) for n, d in files.items()]},
        headers=gateway.headers("alice"),
    )
    assert researcher.status_code == 403
    assert approve(gateway, child, files).json() == {"recorded": True, "files": 2}
    assert approve(gateway, child, dict(reversed(files.items()))).json() == {"recorded": False, "files": 2}
    for other in (
        {"/outputs/counts.csv": files["/outputs/counts.csv"]},  # fewer
        {**files, "/outputs/extract.csv": b"person_id\n1001\n"},  # more
        {**files, "/outputs/notes.txt": b"three regions\n"},  # the same names, other bytes
    ):
        changed = approve(gateway, child, other)
        assert changed.status_code == 409
        assert "never change" in changed.json()["detail"]
    assert len(_audited(gateway, "release.approvals")) == 1
    with gateway.db.read() as session:
        assert {(a.name, a.sha256) for a in results.approvals_of(session, child)} == {
            (n, hashlib.sha256(d).hexdigest()) for n, d in files.items()
        }


@pytest.mark.parametrize(
    ("name", "kind", "step"),
    [
        ("/outputs/../../etc/passwd", "output", None),
        ("//etc/passwd", "output", None),
        ("outputs/counts.csv", "output", None),
        ("/outputs/a\x00b.csv", "output", None),
        ("/outputs/a\\b.csv", "output", None),
        ("../step-0.stdout", "stdout", 0),
        ("step-0.stdout", "stdout", None),
        ("step-1.stdout", "stdout", 0),
    ],
)
def test_a_name_that_could_escape_or_does_not_fit_its_kind_gets_400(releasing, name, kind, step):
    gateway, bucket = releasing
    child = _in_review(gateway)
    data = b"x\n"
    body = {"name": name, "kind": kind, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    if step is not None:
        body["step"] = step
    recorded = gateway.client.put(
        f"{AGENT}/children/{child}/approvals", json={"files": [body]}, headers=agent_headers(gateway)
    )
    assert recorded.status_code == 400, recorded.text
    assert recorded.json()["detail"].startswith("name: "), recorded.text
    uploaded = gateway.client.put(
        f"{AGENT}/children/{child}/files", params=body, content=data, headers=agent_headers(gateway)
    )
    # A NUL in the query is refused for the whole URL, before the route reads the name.
    expected = "the URL holds a NUL character" if "\x00" in name else "name: "
    assert uploaded.status_code == 400, uploaded.text
    assert uploaded.json()["detail"].startswith(expected), uploaded.text
    assert list(bucket.list("")) == []


def test_a_child_ends_only_with_a_disclosure_record_approving_exactly_the_recorded_files(releasing):
    gateway, _ = releasing
    child = _in_review(gateway)
    files = {"/outputs/counts.csv": b"region,n\nnorth,120\n", "/outputs/notes.txt": b"two regions\n"}

    def disclosure(approved_names):
        return {
            "disclosure": {
                "files": [
                    {
                        "name": n,
                        "sha256": hashlib.sha256(d).hexdigest(),
                        "decision": "approved" if n in approved_names else "rejected",
                    }
                    for n, d in files.items()
                ]
            }
        }

    assert (
        event(gateway, child, 1, 5, "released", report=disclosure(set(files))).status_code == 409
    )  # none recorded
    assert approve(gateway, child, {"/outputs/counts.csv": files["/outputs/counts.csv"]}).status_code == 200
    assert upload(gateway, child, files["/outputs/counts.csv"], name="/outputs/counts.csv").status_code == 200
    more = event(gateway, child, 1, 5, "released", report=disclosure(set(files)))
    assert more.status_code == 409
    assert "must be the same" in more.json()["detail"]
    assert event(gateway, child, 1, 5, "withheld", report=disclosure(set())).status_code == 409
    ended = event(gateway, child, 1, 5, "partially_released", report=disclosure({"/outputs/counts.csv"}))
    assert ended.status_code == 200
    assert ended.json()["stage"] == "partially_released"


def test_an_approved_file_that_never_arrived_holds_the_release(releasing):
    gateway, _ = releasing
    child = _in_review(gateway)
    data = b"region,n\nnorth,120\n"
    assert approve(gateway, child, {"/outputs/counts.csv": data}).status_code == 200
    report = {
        "disclosure": {
            "files": [
                {
                    "name": "/outputs/counts.csv",
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "decision": "approved",
                }
            ]
        }
    }
    missing = event(gateway, child, 1, 5, "released", report=report)
    assert missing.status_code == 409
    assert "has not arrived intact" in missing.json()["detail"]
    assert upload(gateway, child, data).status_code == 200
    assert event(gateway, child, 1, 5, "released", report=report).status_code == 200


def test_an_idle_long_poll_opens_no_write_transaction(gateway, monkeypatch):
    """An idle agent rechecks every 0.5 s; on SQLite a write would queue with every task creation."""
    lease(gateway)  # the agent's first call (nothing to hand out either way)
    db = app_context(gateway.app).db
    real, writes = db.write, []

    def counted(*args, **kwargs):
        writes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(db, "write", counted)
    assert lease(gateway, wait_s=1.2) == {"leases": [], "cancel": []}
    assert writes == []
    task_id = submit(gateway, tres="uk-tre")  # and work still goes out when it comes
    assert [g["task_id"] for g in lease(gateway)["leases"]] == [task_id]
    assert writes  # the count is live: the submit and the lease that handed work out wrote


# --- what of an agent's words reaches the researcher (RELIABILITY 31, the gateway's side) ----------


def test_the_gateway_shows_nothing_run_derived_that_an_agent_sends_before_a_release(gateway):
    task_id = submit(gateway, tres="uk-tre")
    child = lease(gateway)["leases"][0]["child_id"]
    secret = "10000001,8507,1978"
    run = {"steps": [{"exit_code": 112, "start_time": "2026-01-01T00:00:00.123456Z"}]}
    walk = [
        ("staging", {"message": "uk-tre approved project alpha and user alice"}),
        ("running", {"message": f"started {secret}"}),
        ("checking", {"message": "exit codes: 112", "report": run}),
        ("awaiting_review", {"message": "3 file(s) held (1 pass, 2 fail)", "report": {"held_files": 3}}),
    ]
    for seq, (stage, extra) in enumerate(walk, start=1):
        assert event(gateway, child, 1, seq, stage, **extra).status_code == 200
    held = gateway.client.get(f"{TES}/tasks/{task_id}", params={"view": "FULL"}, headers=gateway.headers())
    log = held.json()["logs"][0]
    assert log["logs"] == []
    assert log["system_logs"] == [
        "uk-tre approved project alpha and user alice",
        "uk-tre: outputs are held in the TRE's airlock for review by its output checkers",
    ]
    disclosure = {
        "policy": {"required_approvals": 1},
        "files": [
            {
                "name": f"/outputs/{secret}.csv",
                "sha256": "0" * 64,
                "size": 4096,
                "decision": "rejected",
                "checks": {"verdict": "fail", "rules": [{"rule": "r", "findings": [{"message": secret}]}]},
                "decisions": [{"checker": "oc", "decision": "rejected", "reason": "record-level data"}],
            }
        ],
        "withheld_reasons": ["record-level data", "record-level data", " "],
    }
    ending = {"disclosure": disclosure, **run, "released_logs": {"0.stdout": secret}}
    assert event(gateway, child, 1, 5, "withheld", report=ending).status_code == 200
    full = gateway.client.get(f"{TES}/tasks/{task_id}", params={"view": "FULL"}, headers=gateway.headers())
    results = gateway.client.get(f"/api/v1/tasks/{task_id}/results", headers=gateway.headers())
    for body in (full.text, results.text):
        assert secret not in body
        assert "112" not in body
        assert "4096" not in body
        assert "file(s)" not in body
    assert full.json()["logs"][0]["logs"] == []
    assert full.json()["logs"][0]["system_logs"][-1] == (
        "uk-tre: the output checkers withheld every output; their reasons: record-level data"
    )
    assert results.json()["tres"][0]["disclosure"] == {
        "profile": "fivesafes-tes/disclosure-export/1",
        "tre": "uk-tre",
        "outcome": "withheld",
        "policy": {"required_approvals": 1},
        "files": [],
        "withheld_reasons": ["record-level data"],
    }
