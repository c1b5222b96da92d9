"""The held-to-released path under failure: an S3 outage holds nothing back silently and releases nothing
unchecked (RELIABILITY 14); an error between two uploads loses and doubles nothing (24; the real
`kill -9` at every step is in test_release_kill9.py); and no log line carries a token, a key or an
output's contents (28)."""

from __future__ import annotations

import hashlib
import logging
import time

import httpx
import pytest
from sqlalchemy import func, select

from fivesafes_tes import devstack, logs
from fivesafes_tes.agent import review
from fivesafes_tes.agent.tables import LocalChild
from fivesafes_tes.auth import Person
from fivesafes_tes.devimages import BUSYBOX_IMAGE
from fivesafes_tes.egress import airlock
from fivesafes_tes.submission.tables import ReleasedFile
from tests import images
from tests.waiting import wait_for

docker_client = images.docker_client
TES = "/ga4gh/tes/v1"
CANARY = "canary-output-7f3a9c"


def task(script: str) -> dict:
    return {
        "executors": [{"image": BUSYBOX_IMAGE, "command": ["sh", "/analysis/run.sh"]}],
        "inputs": [{"path": "/analysis/run.sh", "content": script}],
        "outputs": [
            {"path": "/outputs/a.txt", "url": "s3://results/a.txt"},
            {"path": "/outputs/b.txt", "url": "s3://results/b.txt"},
        ],
        "tags": {"tres": "uk-tre"},
    }


SCRIPT = f"echo {CANARY} > /outputs/a.txt; echo second > /outputs/b.txt; echo {CANARY}\n"


@pytest.fixture
def stack(tmp_path, docker_client):
    images.ensure_busybox_image(docker_client)
    with devstack.start(tmp_path / "stack", agents=True, executor="docker") as running:
        yield running


def _stage(http: httpx.Client, task_id: str) -> str:
    return http.get(f"{TES}/tasks/{task_id}", params={"view": "BASIC"}).json()["logs"][0]["metadata"]["stage"]


def _wait(http: httpx.Client, task_id: str, stage: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _stage(http, task_id) != stage:
        assert time.monotonic() < deadline, f"never reached {stage}; at {_stage(http, task_id)}"
        time.sleep(0.1)


def _approve_all(agent, child: str) -> None:
    with agent.db.write() as session:
        for file in review.describe(session, child).files:
            review.decide(
                session,
                child,
                file.key,
                Person("i", "uk-checker", "uk-checker"),
                "approved",
                reason="checked",
            )


def _child(agent) -> str:
    with agent.db.read() as session:
        return session.scalars(select(LocalChild.child_id).order_by(LocalChild.created_at.desc())).first()


def test_an_airlock_outage_holds_back_and_resumes(stack, caplog):
    caplog.set_level(logging.WARNING, logger="fivesafes_tes.agent.loop")
    http = httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {stack.token('alice')}"}, timeout=30
    )
    uk = stack.agents["uk-tre"]
    stack.s3.stop()  # the TRE's S3 goes away before the task's outputs can be held
    try:
        task_id = http.post(f"{TES}/tasks", json=task(SCRIPT)).json()["id"]
        _wait(http, task_id, "checking")
        child = _child(uk)

        def outages() -> int:
            return sum(
                "airlock unavailable" in r.getMessage() and child in r.getMessage() for r in caplog.records
            )

        # The agent tries the hold again and again while S3 is down; after two failed tries the child
        # is still checking: nothing skipped, nothing released unchecked.
        wait_for(lambda: outages() >= 2, 30, "the agent to find the airlock unavailable twice")
        assert _stage(http, task_id) == "checking"
    finally:
        stack.s3.start()
    _wait(http, task_id, "awaiting_review")
    assert airlock.read_manifest(uk.store, _child(uk)) is not None


def test_a_crash_during_the_copy_loses_and_doubles_nothing(stack, monkeypatch):
    http = httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {stack.token('alice')}"}, timeout=30
    )
    uk = stack.agents["uk-tre"]
    task_id = http.post(f"{TES}/tasks", json=task(SCRIPT)).json()["id"]
    _wait(http, task_id, "awaiting_review")
    child = _child(uk)
    real_upload, calls = uk.client.upload_file, []

    def crash_after_first(*args, **kwargs):
        calls.append(args[1].name)
        result = real_upload(*args, **kwargs)
        if len(calls) == 2:  # the second file reached the gateway, then the agent "died"
            raise RuntimeError("simulated crash between two uploads")
        return result

    monkeypatch.setattr(uk.client, "upload_file", crash_after_first)
    _approve_all(uk, child)
    _wait(http, task_id, "released")
    assert len(calls) > 4  # the interrupted release was retried from the start
    with devstack.Database(stack.settings.effective_database_url).read() as session:
        names = list(session.scalars(select(ReleasedFile.name).where(ReleasedFile.child_id == child)))
        assert sorted(names) == sorted(set(names))
        assert len(names) == 4
        assert session.scalar(select(func.count()).select_from(ReleasedFile)) == 4
    held = airlock.held_prefix(child)  # (moto keeps one S3 per process: other tests' buckets are here too)
    deadline = (
        time.monotonic() + 15
    )  # the agent empties the airlock right after the gateway recorded the release
    while list(uk.store.list(held)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(uk.store.list(held)) == []
    listing = http.get(f"/api/v1/tasks/{task_id}/results").json()["tres"][0]["files"]
    assert sorted(f["name"] for f in listing) == sorted(names)
    for file in listing:
        body = http.get(f"/api/v1/results/{file['id']}")
        assert body.status_code == 200
        assert hashlib.sha256(body.content).hexdigest() == file["sha256"]


def test_no_token_key_or_output_content_reaches_the_logs(stack, caplog):
    logs.configure(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    token = stack.token("alice")
    http = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    uk = stack.agents["uk-tre"]
    task_id = http.post(f"{TES}/tasks", json=task(SCRIPT)).json()["id"]
    _wait(http, task_id, "awaiting_review")
    _approve_all(uk, _child(uk))
    _wait(http, task_id, "released")
    for file in http.get(f"/api/v1/tasks/{task_id}/results").json()["tres"][0]["files"]:
        http.get(f"/api/v1/results/{file['id']}")
    http.get(
        f"{TES}/tasks", headers={"Authorization": "Bearer " + token[:-4] + "AAAA"}
    )  # a forged token, refused
    text = caplog.text
    assert any(r.name.startswith("fivesafes_tes") for r in caplog.records)  # our own logging was captured
    for secret in (token, token.split(".")[2], uk.client._token(), "dev-secret", CANARY, "Signature="):
        assert secret not in text, f"{secret[:12]}... leaked into the logs"
