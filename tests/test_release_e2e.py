"""Held outputs to the researcher, through Docker and S3: a checker's decisions release exactly the
approved files, with SHA-256s verified at the TRE, at the gateway and at download (RELIABILITY 21, 22,
25); the submitter never approves (3)."""

from __future__ import annotations

import hashlib
import json
import time

import httpx
import pytest
from sqlalchemy import select

from fivesafes_tes import devstack
from fivesafes_tes.agent import review
from fivesafes_tes.agent.tables import LocalChild
from fivesafes_tes.audit.tables import AuditRecord
from fivesafes_tes.auth import Person
from fivesafes_tes.devimages import BUSYBOX_IMAGE
from fivesafes_tes.egress import airlock
from tests import images

docker_client = images.docker_client
TES = "/ga4gh/tes/v1"

SCRIPT = """set -e
persons=$(($(wc -l < /data/omop/person.csv) - 1))
echo "persons" > /outputs/summary.csv
echo "$persons" >> /outputs/summary.csv
head -3 /data/omop/person.csv > /outputs/detail.csv
echo "summarised $persons people"
"""
TASK = {
    "name": "release-me",
    "executors": [{"image": BUSYBOX_IMAGE, "command": ["sh", "/analysis/run.sh"]}],
    "inputs": [{"path": "/analysis/run.sh", "content": SCRIPT}],
    "outputs": [
        {"path": "/outputs/summary.csv", "url": "s3://results/summary.csv"},
        {"path": "/outputs/detail.csv", "url": "s3://results/detail.csv"},
    ],
}


@pytest.fixture
def stack(tmp_path, docker_client):
    images.ensure_busybox_image(docker_client)
    with devstack.start(tmp_path / "stack", agents=True, executor="docker") as running:
        yield running


def _wait(http: httpx.Client, task_id: str, done, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = http.get(f"{TES}/tasks/{task_id}", params={"view": "FULL"}).json()
        if done(doc):
            return doc
        time.sleep(0.1)
    raise AssertionError(
        f"timed out: {[(log['metadata']['tre'], log['metadata']['stage']) for log in doc['logs']]}"
    )


def _child(agent) -> str:
    with agent.db.read() as session:
        return session.scalars(select(LocalChild.child_id).order_by(LocalChild.created_at.desc())).first()


TRE_IDP = "https://idp.tre.example"


def _decide(agent, child, name, checker, decision, reason="") -> None:
    with agent.db.write() as session:
        review.decide(
            session,
            child,
            review.key_for(session, child, name),
            Person(TRE_IDP, checker, checker),
            decision,
            reason=reason,
        )


def test_exactly_the_approved_files_reach_the_researcher_intact(stack):
    alice = httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {stack.token('alice')}"}, timeout=30
    )
    task_id = alice.post(f"{TES}/tasks", json=TASK).json()["id"]
    _wait(alice, task_id, lambda d: all(log["metadata"]["stage"] == "awaiting_review" for log in d["logs"]))
    uk, sg = stack.agents["uk-tre"], stack.agents["sg-tre"]
    uk_child, sg_child = _child(uk), _child(sg)
    held_before = {f.name: f.sha256 for f in uk_held(uk, uk_child)}

    # Nothing is downloadable while held, and nothing shows in the TES view.
    listing = alice.get(f"/api/v1/tasks/{task_id}/results").json()
    assert all(t["files"] == [] for t in listing["tres"])
    with pytest.raises(review.ReviewRefused, match="cannot review"):
        _decide(uk, uk_child, "/outputs/summary.csv", "alice", "approved")
    # Through the TRE's own API: alice's subject (the lease carried it) under another name is refused.
    own = stack.tre_token("Dr A. Smith", "output-checker", "uk-tre", extra={"sub": "alice"})
    refused = httpx.post(
        f"{stack.tre_url('uk-tre')}/review/v1/children/{uk_child}/decisions",
        json={"name": "/outputs/summary.csv", "decision": "approved"},
        headers={"Authorization": f"Bearer {own}"},
        timeout=30,
    )
    assert refused.status_code == 403
    assert "submitted this task" in refused.json()["detail"]

    _decide(uk, uk_child, "/outputs/summary.csv", "uk-checker", "approved", "aggregate count")
    _decide(uk, uk_child, "step-0.stdout", "uk-checker", "approved", "a count only")
    _decide(uk, uk_child, "step-0.stderr", "uk-checker", "approved", "empty")
    _decide(uk, uk_child, "/outputs/detail.csv", "uk-checker", "rejected", "person-level rows")
    for name in ("/outputs/summary.csv", "/outputs/detail.csv", "step-0.stdout", "step-0.stderr"):
        _decide(sg, sg_child, name, "sg-checker", "rejected", "not needed")

    doc = _wait(
        alice,
        task_id,
        lambda d: all(log["metadata"]["stage"] in ("partially_released", "withheld") for log in d["logs"]),
    )
    assert doc["state"] == "COMPLETE"
    stages = {log["metadata"]["tre"]: log["metadata"]["stage"] for log in doc["logs"]}
    assert stages == {"uk-tre": "partially_released", "sg-tre": "withheld"}
    uk_log = next(log for log in doc["logs"] if log["metadata"]["tre"] == "uk-tre")
    sg_log = next(log for log in doc["logs"] if log["metadata"]["tre"] == "sg-tre")
    assert [o["path"] for o in uk_log["outputs"]] == ["/outputs/summary.csv"]
    assert uk_log["logs"][0]["stdout"].startswith("summarised ")
    assert uk_log["logs"][0]["exit_code"] == 0
    # Withheld: no outputs, no logs, not even the exit codes (which the checker did not let out).
    assert sg_log["outputs"] == []
    assert sg_log["logs"] == []
    assert (
        "sg-tre: the output checkers withheld every output; their reasons: not needed"
        in sg_log["system_logs"]
    )

    listing = alice.get(f"/api/v1/tasks/{task_id}/results").json()
    released = {t["tre"]: t for t in listing["tres"]}
    assert sorted(f["name"] for f in released["uk-tre"]["files"]) == [
        "/outputs/summary.csv",
        "step-0.stderr",
        "step-0.stdout",
    ]
    assert released["sg-tre"]["files"] == []
    for file in released["uk-tre"]["files"]:
        body = alice.get(f"/api/v1/results/{file['id']}").content
        assert hashlib.sha256(body).hexdigest() == file["sha256"] == held_before[file["name"]]
    # The researcher's disclosure record: the released files with their rules' verdicts and the
    # decisions, and the reasons for withholding the rest; nothing of the withheld file itself.
    disclosure = released["uk-tre"]["disclosure"]
    assert sorted(f["name"] for f in disclosure["files"]) == sorted(
        held_before.keys() - {"/outputs/detail.csv"}
    )
    summary = next(f for f in disclosure["files"] if f["name"] == "/outputs/summary.csv")
    assert summary["decisions"] == [
        {
            "checker": "uk-checker",
            "decision": "approved",
            "reason": "aggregate count",
            "at": summary["decisions"][0]["at"],
        }
    ]
    assert disclosure["withheld_reasons"] == ["person-level rows"]
    for file in disclosure["files"]:
        assert len(file["sha256"]) == 64
        assert file["checks"]["rules"]
        assert all(
            set(rule) == {"rule", "version", "verdict"} for rule in file["checks"]["rules"]
        )  # no findings
    assert "detail.csv" not in json.dumps(listing)
    assert released["sg-tre"]["disclosure"]["files"] == []
    assert released["sg-tre"]["disclosure"]["withheld_reasons"] == ["not needed"]

    # The full record (every held file, finding and decision) stays with the TRE's output checkers
    # (RELIABILITY 25).
    with uk.db.read() as session:
        record = review.kept_record(session, uk_child)
    detail = next(f for f in record["files"] if f["name"] == "/outputs/detail.csv")
    assert detail["decision"] == "rejected"
    assert detail["decisions"][0] == {
        "checker": "uk-checker",
        "decision": "rejected",
        "reason": "person-level rows",
        "at": detail["decisions"][0]["at"],
    }
    assert all(len(f["sha256"]) == 64 and f["checks"]["rules"] for f in record["files"])

    # The researcher's command downloads exactly the released files, checking each SHA-256.
    from typer.testing import CliRunner

    from fivesafes_tes.cli import app

    out = stack.settings.data_dir / "downloaded"
    result = CliRunner().invoke(
        app, ["results", task_id, "--out", str(out), "--url", stack.url, "--token", stack.token("alice")]
    )
    assert result.exit_code == 0, result.output
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert got == ["uk-tre/outputs/summary.csv", "uk-tre/step-0.stderr", "uk-tre/step-0.stdout"]
    assert "person-level rows" in result.output  # the decisions and reasons are shown

    # bob (another project) can see none of it; the airlocks are empty once released
    bob = httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {stack.token('bob')}"}, timeout=30
    )
    assert bob.get(f"/api/v1/tasks/{task_id}/results").status_code == 404
    assert bob.get(f"/api/v1/results/{released['uk-tre']['files'][0]['id']}").status_code == 404
    deadline = time.monotonic() + 15  # the agents empty their airlocks once the gateway answered
    while time.monotonic() < deadline and (
        airlock.read_manifest(uk.store, uk_child) or airlock.read_manifest(sg.store, sg_child)
    ):
        time.sleep(0.1)
    assert airlock.read_manifest(uk.store, uk_child) is None
    assert airlock.read_manifest(sg.store, sg_child) is None


def uk_held(agent, child):
    from fivesafes_tes.agent.tables import HeldFileRecord

    with agent.db.read() as session:
        return list(session.scalars(select(HeldFileRecord).where(HeldFileRecord.child_id == child)))


def test_a_held_file_changed_behind_the_systems_back_blocks_the_release(stack):
    alice = httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {stack.token('alice')}"}, timeout=30
    )
    task_id = alice.post(f"{TES}/tasks", json={**TASK, "tags": {"tres": "uk-tre"}}).json()["id"]
    _wait(alice, task_id, lambda d: d["logs"][0]["metadata"]["stage"] == "awaiting_review")
    uk = stack.agents["uk-tre"]
    child = _child(uk)
    key = next(f.key for f in uk_held(uk, child) if f.name == "/outputs/summary.csv")
    import boto3

    boto3.client(
        "s3",
        endpoint_url=stack.s3_url,
        aws_access_key_id="dev",
        aws_secret_access_key="dev-secret",
        region_name="us-east-1",
    ).put_object(Bucket="uk-tre-airlock", Key=key, Body=b"persons\n3\n")
    for f in uk_held(uk, child):
        _decide(uk, child, f.name, "uk-checker", "approved", "fine")
    doc = _wait(
        alice, task_id, lambda d: any("release blocked" in line for line in d["logs"][0]["system_logs"])
    )
    assert doc["logs"][0]["metadata"]["stage"] == "awaiting_review"
    assert alice.get(f"/api/v1/tasks/{task_id}/results").json()["tres"][0]["files"] == []
    with uk.db.read() as session:
        alerts = list(session.scalars(select(AuditRecord).where(AuditRecord.action == "release.integrity")))
    assert len(alerts) == 1
    assert alerts[0].detail["name"] == "/outputs/summary.csv"


def test_released_outputs_are_delivered_where_the_task_asked_if_the_gateway_may_write_there(
    tmp_path, docker_client
):
    import boto3

    images.ensure_busybox_image(docker_client)
    with devstack.start(
        tmp_path / "stack", agents=True, executor="docker", delivery_buckets=["project-outputs"]
    ) as stack:
        s3 = boto3.client(
            "s3",
            endpoint_url=stack.s3_url,
            aws_access_key_id="dev",
            aws_secret_access_key="dev-secret",
            region_name="us-east-1",
        )
        for bucket in ("project-outputs", "elsewhere"):
            s3.create_bucket(Bucket=bucket)
        task = {
            **TASK,
            "tags": {"tres": "uk-tre"},
            "outputs": [
                {"path": "/outputs/summary.csv", "url": "s3://project-outputs/study-1/summary.csv"},
                {"path": "/outputs/detail.csv", "url": "s3://elsewhere/detail.csv"},
            ],
        }
        alice = httpx.Client(
            base_url=stack.url, headers={"Authorization": f"Bearer {stack.token('alice')}"}, timeout=30
        )
        task_id = alice.post(f"{TES}/tasks", json=task).json()["id"]
        _wait(alice, task_id, lambda d: d["logs"][0]["metadata"]["stage"] == "awaiting_review")
        uk = stack.agents["uk-tre"]
        child = _child(uk)
        for file in uk_held(uk, child):
            _decide(uk, child, file.name, "uk-checker", "approved", "fine")
        doc = _wait(
            alice,
            task_id,
            lambda d: (
                d["logs"][0]["metadata"]["stage"] == "released"
                and any(o["url"].startswith("s3://") for o in d["logs"][0]["outputs"])
            ),
        )
        outputs = {o["path"]: o["url"] for o in doc["logs"][0]["outputs"]}
        assert outputs["/outputs/summary.csv"] == "s3://project-outputs/study-1/summary.csv"
        assert outputs["/outputs/detail.csv"].startswith(
            f"{stack.url}/api/v1/results/"
        )  # not a permitted bucket
        delivered = s3.get_object(Bucket="project-outputs", Key="study-1/summary.csv")["Body"].read()
        held = {f.name: f.sha256 for f in uk_held(uk, child)}
        assert hashlib.sha256(delivered).hexdigest() == held["/outputs/summary.csv"]
        assert s3.list_objects_v2(Bucket="elsewhere").get("KeyCount", 0) == 0
