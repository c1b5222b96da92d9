"""RELIABILITY 24: the held-to-released copy survives `kill -9` at every step.

The gateway and the TRE agent run as their own processes, on a real S3 endpoint (moto over HTTP).
For each step of a release, one of the two is started with a failpoint that kills it with SIGKILL
there (`fivesafes_tes.failpoints`), then restarted without it. Each time, at the moment of death the
airlock still holds every file unless the gateway had already recorded all of them; and once the
release completes the researcher gets every approved file exactly once with its SHA-256, the
results store holds one object per file, each TES output url names where its file was delivered,
and the airlock is empty.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from fivesafes_tes.audit.tables import AuditRecord
from fivesafes_tes.auth import DevIssuer
from fivesafes_tes.db import Database
from fivesafes_tes.devimages import BUSYBOX_IMAGE
from fivesafes_tes.devstack import free_port, seed_federation
from fivesafes_tes.failpoints import ENV
from tests.processes import GatewayProcess, agent_env, approve_all, start_agent

TES = "/ga4gh/tes/v1"
AUDIENCE = "fivesafes-tes"
OUTPUTS = {"/outputs/counts.txt": "north,120\nsouth,45\n", "/outputs/summary.txt": "two regions\n"}
STDOUT = "analysis done"
RELEASED = 4  # two outputs, the step's stdout and stderr

# (which process dies, where; release.file records then; objects then held in the airlock: the
# files and their manifest, or None where either may be true). In the order a release passes them.
POINTS = [
    ("agent", "release.copied", 0, RELEASED + 1),  # approved files read out of the airlock, nothing sent
    ("gateway", "release.stored", 0, RELEASED + 1),  # first file in the results store, not recorded
    ("gateway", "release.recorded", 1, RELEASED + 1),  # first file recorded, the agent not told
    ("agent", "release.uploaded", 1, RELEASED + 1),  # first file confirmed
    ("agent", f"release.uploaded:{RELEASED}", RELEASED, RELEASED + 1),  # all confirmed, no final event
    ("gateway", "release.ended", RELEASED, RELEASED + 1),  # the final event committed, not answered
    # one output delivered: by the delivery loop, after the agent had its answer and may have
    # emptied its airlock already
    ("gateway", "release.delivered", RELEASED, None),
    ("agent", "release.final_sent", RELEASED, RELEASED + 1),  # the final event sent, airlock not emptied
    ("agent", "airlock.discarded", RELEASED, RELEASED),  # the manifest deleted, its files not yet
]


def _task(deliveries: str) -> dict:
    script = "; ".join(f"printf '{text}' > {path}" for path, text in OUTPUTS.items())
    return {
        "name": "release under kill -9",
        "executors": [{"image": BUSYBOX_IMAGE, "command": ["sh", "-c", f"{script}; echo {STDOUT}"]}],
        "outputs": [{"path": path, "url": f"s3://{deliveries}{path}"} for path in OUTPUTS],
        "tags": {"tres": "uk-tre"},
    }


def _stage(http: httpx.Client, gateway: str, task_id: str) -> str:
    doc = http.get(f"{gateway}{TES}/tasks/{task_id}", params={"view": "BASIC"}).json()
    return doc["logs"][0]["metadata"]["stage"]


def _keys(store, prefix: str = "") -> list[str]:
    return sorted(o.key for o in store.list(prefix))


@pytest.mark.parametrize(
    ("victim", "point", "recorded_then", "held_then"), POINTS, ids=[f"{p[0]}-{p[1]}" for p in POINTS]
)
def test_a_release_killed_9_at_each_step_loses_and_doubles_nothing(
    tmp_path: Path, s3_endpoint, victim: str, point: str, recorded_then: int, held_then: int | None
) -> None:
    airlock, results, deliveries = s3_endpoint.store(), s3_endpoint.store(), s3_endpoint.store()
    port = free_port()
    gateway_url = f"http://127.0.0.1:{port}"
    database_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    issuer = DevIssuer(tmp_path / "gateway" / "dev-issuer", gateway_url + "/dev-issuer")
    gateway = GatewayProcess(
        database_url=database_url,
        data_dir=tmp_path / "gateway",
        port=port,
        public_url=gateway_url,
        log=tmp_path / "gateway.log",
        lease_ttl_s=600,
        env={
            "FIVESAFES_RESULTS_ENDPOINT_URL": s3_endpoint.url,
            "FIVESAFES_RESULTS_BUCKET": results.bucket,
            "FIVESAFES_RESULTS_ACCESS_KEY": s3_endpoint.access_key,
            "FIVESAFES_RESULTS_SECRET_KEY": s3_endpoint.secret_key,
            "FIVESAFES_DELIVERY_BUCKETS": json.dumps([deliveries.bucket]),
            "FIVESAFES_DELIVERY_CLAIM_S": "2",  # a gateway killed mid-delivery holds it this long
            **({ENV: point} if victim == "gateway" else {}),
        },
    )
    token = issuer.issue("agent-uk-tre", ["tre-agent"], audience=AUDIENCE, ttl_s=3600, tre="uk-tre")
    env = agent_env(
        gateway_url,
        token,
        s3_endpoint,
        tmp_path / "agent",
        bucket=airlock.bucket,
        policy={"review": {"auto_release": True}},  # every rule passes these files: no person needed
        env={"FIVESAFES_AGENT_EXECUTOR": "local", **({ENV: point} if victim == "agent" else {})},
    )
    agent_log = tmp_path / "agent.log"
    alice = httpx.Client(
        headers={"Authorization": f"Bearer {issuer.issue('alice', ['researcher'], audience=AUDIENCE)}"},
        timeout=30,
    )
    agent = None
    db = Database(database_url)
    try:
        gateway.start()
        seed_federation(db)
        agent = start_agent(env, agent_log)
        approve_all(env)
        response = alice.post(f"{gateway_url}{TES}/tasks", json=_task(deliveries.bucket))
        assert response.status_code == 200, response.text
        task_id = response.json()["id"]

        # The failpoint fires: the process is gone with SIGKILL, mid-release.
        dying = gateway.proc if victim == "gateway" else agent
        assert dying is not None
        try:
            assert dying.wait(timeout=90) == -9, "the process ended, but not by the failpoint"
        except Exception:
            print(gateway.tail(), agent_log.read_text()[-3000:])
            raise
        # Died where it should have: what the gateway had recorded, and what the airlock held (the
        # source stays until the gateway holds every file, verified).
        held = _keys(airlock, "held/")
        assert db_count(db, "release.file") == recorded_then
        if held_then is not None:
            assert len(held) == held_then, held
        if point == "airlock.discarded":
            assert not any(k.endswith("manifest.json") for k in held)

        # Restarted without the failpoint, the release completes.
        if victim == "gateway":
            gateway.proc = None
            gateway.env.pop(ENV)
            gateway.start()
        else:
            env.pop(ENV)
            agent = start_agent(env, agent_log)
        deadline = time.monotonic() + 60
        while _stage(alice, gateway_url, task_id) != "released" or _keys(airlock, "held/"):
            assert time.monotonic() < deadline, (
                f"stuck at {_stage(alice, gateway_url, task_id)}, airlock {_keys(airlock, 'held/')}\n"
                f"{gateway.tail()}\n{agent_log.read_text()[-3000:]}"
            )
            time.sleep(0.2)

        # The researcher gets each file once, intact.
        [tre] = alice.get(f"{gateway_url}/api/v1/tasks/{task_id}/results").json()["tres"]
        names = sorted(f["name"] for f in tre["files"])
        assert names == sorted([*OUTPUTS, "step-0.stdout", "step-0.stderr"])
        for file in tre["files"]:
            body = alice.get(f"{gateway_url}/api/v1/results/{file['id']}").content
            assert hashlib.sha256(body).hexdigest() == file["sha256"]
            if file["name"] in OUTPUTS:
                assert body.decode() == OUTPUTS[file["name"]]
        assert len(_keys(results)) == RELEASED  # one stored object per file: nothing doubled
        assert db_count(db, "release.file") == RELEASED

        # Each output went where its url says, once, and the TES view says so (the delivery follows
        # the release: at once, or from the delivery loop of a restarted gateway).
        deadline = time.monotonic() + 30
        while db_count(db, "release.deliver") < len(OUTPUTS):
            assert time.monotonic() < deadline, f"never delivered\n{gateway.tail()}"
            time.sleep(0.2)
        assert _keys(deliveries) == sorted(path.lstrip("/") for path in OUTPUTS)
        for path, text in OUTPUTS.items():
            assert deliveries.get_bytes(path.lstrip("/")).decode() == text
        full = alice.get(f"{gateway_url}{TES}/tasks/{task_id}", params={"view": "FULL"}).json()
        urls = {o["path"]: o["url"] for o in full["logs"][0]["outputs"]}
        assert urls == {path: f"s3://{deliveries.bucket}{path}" for path in OUTPUTS}
        assert db_count(db, "release.deliver") == len(OUTPUTS)
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait(timeout=10)
        gateway.stop()
        db.dispose()


def db_count(db: Database, action: str) -> int:
    with db.read() as session:
        return session.scalar(
            select(func.count()).select_from(AuditRecord).where(AuditRecord.action == action)
        )
