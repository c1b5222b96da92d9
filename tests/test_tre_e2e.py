"""One task, many TREs, through the real Docker engine and a real S3 endpoint (moto over HTTP).

Issue 3's acceptance: a task submitted once runs in the UK and the Singapore TRE, each holding its
outputs and logs in its own airlock with correct SHA-256s; parent and per-TRE states are right at
every step; unapproved people and projects end `rejected_by_tre` with a clear line; cancel stops a
`sleep 600` within seconds. Also RELIABILITY 10, 12, 19, 20, 29 at the level of the whole agent.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest

from fivesafes_tes import devstack
from fivesafes_tes.agent import approvals
from fivesafes_tes.auth import Person
from fivesafes_tes.devimages import BUSYBOX_IMAGE
from fivesafes_tes.egress import airlock
from fivesafes_tes.submission.stages import TRANSITIONS, Stage
from tests import images
from tests.conftest import gateway_forgets_policies
from tests.processes import agent_env, approve_all, start_agent
from tests.waiting import wait_for

docker_client = images.docker_client
TES = "/ga4gh/tes/v1"

PREVALENCE = """set -e
persons=$(($(wc -l < /data/omop/person.csv) - 1))
diabetes=$(awk -F, 'NR>1 && $3==201826 {print $2}' /data/omop/condition_occurrence.csv | sort -u | wc -l)
echo "persons,diabetes" > /outputs/prevalence.csv
echo "$persons,$diabetes" >> /outputs/prevalence.csv
echo "counted $persons people"
"""


def analysis(script: str = PREVALENCE, **extra):
    return {
        "name": "prevalence",
        "executors": [{"image": BUSYBOX_IMAGE, "command": ["sh", "/analysis/run.sh"]}],
        "inputs": [{"path": "/analysis/run.sh", "content": script}],
        "outputs": [{"path": "/outputs/prevalence.csv", "url": "s3://results/prevalence.csv"}],
        **extra,
    }


@pytest.fixture
def federation(tmp_path, docker_client):
    images.ensure_busybox_image(docker_client)
    with devstack.start(tmp_path / "stack", agents=True, executor="docker") as stack:
        yield stack


class Researcher:
    def __init__(self, stack: devstack.DevStack, user: str = "alice") -> None:
        self.stack = stack
        self.http = httpx.Client(
            base_url=stack.url + TES, headers={"Authorization": f"Bearer {stack.token(user)}"}, timeout=30
        )

    def submit(self, task: dict) -> str:
        response = self.http.post("/tasks", json=task)
        assert response.status_code == 200, response.text
        return response.json()["id"]

    def full(self, task_id: str) -> dict:
        return self.http.get(f"/tasks/{task_id}", params={"view": "FULL"}).json()

    def stages(self, task_id: str) -> dict[str, str]:
        return {log["metadata"]["tre"]: log["metadata"]["stage"] for log in self.full(task_id)["logs"]}

    def wait(self, task_id: str, done, timeout: float = 60):
        """Poll until done(doc); return every (state, stages) seen on the way, in order."""
        seen: list[tuple[str, dict[str, str]]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = self.full(task_id)
            now = (doc["state"], {log["metadata"]["tre"]: log["metadata"]["stage"] for log in doc["logs"]})
            if not seen or seen[-1] != now:
                seen.append(now)
            if done(doc):
                return doc, seen
            time.sleep(0.1)
        raise AssertionError(f"timed out; last seen {seen[-1] if seen else None}")


def _held(doc: dict) -> bool:
    return all(log["metadata"]["stage"] == "awaiting_review" for log in doc["logs"])


def _ended(doc: dict) -> bool:
    return all(Stage(log["metadata"]["stage"]).is_final for log in doc["logs"])


def test_one_task_runs_in_both_tres_and_holds_outputs_with_checksums(federation):
    alice = Researcher(federation)
    task_id = alice.submit(analysis())
    doc, seen = alice.wait(task_id, _held)

    # Every per-TRE stage sequence observed (polling may miss a quick stage) moves forward along legal
    # transitions, and the parent state never goes back.
    for tre in ("uk-tre", "sg-tre"):
        path = [stages[tre] for _, stages in seen]
        path = [s for i, s in enumerate(path) if i == 0 or s != path[i - 1]]
        for before, after in itertools.pairwise(path):
            assert Stage(after) in _reachable(Stage(before)), (tre, path)
    order = ["QUEUED", "INITIALIZING", "RUNNING"]
    states = [state for state, _ in seen]
    assert states == sorted(states, key=order.index)
    assert states[-1] == "RUNNING"
    assert doc["state"] == "RUNNING"

    counts = {}
    for log in doc["logs"]:
        tre = log["metadata"]["tre"]
        assert any("held in" in line and tre in line for line in log["system_logs"])
        assert not log["logs"] or all("stdout" not in e for e in log["logs"])  # logs stay in the TRE
        agent = federation.agents[tre]
        child_id = next(c for c in _children(agent))
        manifest = airlock.read_manifest(agent.store, child_id)
        assert manifest is not None
        kinds = sorted((f.kind, f.name) for f in manifest.files)
        assert kinds == [
            ("output", "/outputs/prevalence.csv"),
            ("stderr", "step-0.stderr"),
            ("stdout", "step-0.stdout"),
        ]
        held = {f.kind: agent.store.get_bytes(airlock.held_key(child_id, f.key)) for f in manifest.files}
        for file in manifest.files:
            assert hashlib.sha256(held[file.kind]).hexdigest() == file.sha256
            assert len(held[file.kind]) == file.size
        table = held["output"].decode()
        stdout = held["stdout"].decode()
        row = next(csv.DictReader(io.StringIO(table)))
        counts[tre] = row
        assert stdout == f"counted {row['persons']} people\n"
        assert int(row["persons"]) == _persons(federation, tre)
    # Each TRE counted its own population, which differ by design.
    assert counts["uk-tre"]["persons"] != counts["sg-tre"]["persons"]


def _reachable(stage: Stage) -> set[Stage]:
    """Every stage some chain of legal transitions leads to from `stage`."""
    seen: set[Stage] = set()
    frontier = [stage]
    while frontier:
        for nxt in TRANSITIONS.get(frontier.pop(), frozenset()):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return seen


def _children(agent) -> list[str]:
    from sqlalchemy import select

    from fivesafes_tes.agent.tables import LocalChild

    with agent.db.read() as session:
        return [
            c.child_id for c in session.scalars(select(LocalChild).order_by(LocalChild.created_at.desc()))
        ]


def _persons(stack, tre: str) -> int:
    dataset = stack.agents[tre].policy.datasets["omop"].path
    return json.loads((dataset / "dataset.json").read_text())["tables"]["person"]["rows"]


def test_unapproved_user_and_project_end_rejected_by_tre_with_a_clear_line(federation):
    bob = Researcher(federation, "bob")  # project cardio: undecided in uk-tre
    task_id = bob.submit(analysis())
    doc, _ = bob.wait(task_id, lambda d: d["logs"][0]["metadata"]["stage"] == "awaiting_tre_approval")
    assert doc["state"] == "QUEUED"
    assert any(
        "waiting for uk-tre's admins to approve project cardio" in line
        for line in doc["logs"][0]["system_logs"]
    )
    uk = federation.agents["uk-tre"]
    with uk.db.write() as session:
        approvals.decide(
            session,
            Person("i", "uk-admin", "uk-admin"),
            "cardio",
            "rejected",
            reason="no ethics approval on file",
        )
    doc, _ = bob.wait(task_id, _ended)
    assert doc["state"] == "SYSTEM_ERROR"
    assert "uk-tre rejected project cardio: no ethics approval on file" in doc["logs"][0]["system_logs"]

    # A person the TRE rejected, in a project it approved: only that TRE refuses.
    sg = federation.agents["sg-tre"]
    with sg.db.write() as session:
        approvals.decide(
            session,
            Person("i", "sg-admin", "sg-admin"),
            "diabetes-cancer",
            "rejected",
            username="carol",
            reason="training expired",
        )
    carol = Researcher(federation, "carol")
    task_id = carol.submit(analysis())
    doc, _ = carol.wait(
        task_id,
        lambda d: (
            carol.stages(task_id)["sg-tre"] == "rejected_by_tre"
            and carol.stages(task_id)["uk-tre"] == "awaiting_review"
        ),
    )
    sg_log = next(log for log in doc["logs"] if log["metadata"]["tre"] == "sg-tre")
    assert "sg-tre rejected carol for project diabetes-cancer: training expired" in sg_log["system_logs"]
    assert doc["state"] == "RUNNING"  # the UK child is still in progress (awaiting review)


def test_cancel_stops_a_running_container_within_seconds(federation, docker_client):
    alice = Researcher(federation)
    script = "echo 'persons,1' > /outputs/prevalence.csv\necho counted-so-far\nsleep 600\n"
    task_id = alice.submit(analysis(script, tags={"tres": "uk-tre"}))
    alice.wait(task_id, lambda d: d["logs"][0]["metadata"]["stage"] == "running")
    child = _children(federation.agents["uk-tre"])[0]
    label = f"org.fivesafes.child={child}"

    def running() -> list:  # type: ignore[type-arg]
        # (the agent removes the containers meanwhile: one gone between list and inspect is fine)
        filters = {"label": label, "status": "running"}
        return docker_client.containers.list(filters=filters, ignore_removed=True)

    def said_something() -> bool:  # the step has really produced output (its file is written first)
        return any(b"counted-so-far" in c.logs() for c in running())

    wait_for(said_something, 30, "the running step to produce output")
    started = time.monotonic()
    assert alice.http.post(f"/tasks/{task_id}:cancel").json() == {}
    assert alice.full(task_id)["state"] == "CANCELED"
    wait_for(lambda: not running(), 10, "the canceled container to stop")
    assert time.monotonic() - started < 10
    store = federation.agents["uk-tre"].store
    wait_for(lambda: _settled(federation.agents["uk-tre"], child), 20, "the agent to settle the cancel")
    assert airlock.read_manifest(store, child) is None
    assert list(store.list(airlock.held_prefix(child))) == []  # nothing it wrote was held
    doc = alice.full(task_id)
    assert all(not log.get("logs") for log in doc["logs"])  # no exit code, no stdout


def _settled(agent, child: str) -> bool:
    from fivesafes_tes.agent.tables import LocalChild

    with agent.db.read() as session:
        local = session.get(LocalChild, child)
        return local is not None and bool((local.result or {}).get("airlock_emptied"))


def test_cancel_while_awaiting_review_empties_the_airlock_and_releases_nothing(federation):
    alice = Researcher(federation)
    task_id = alice.submit(analysis(tags={"tres": "uk-tre"}))
    alice.wait(task_id, _held)
    agent = federation.agents["uk-tre"]
    child = _children(agent)[0]
    manifest = airlock.read_manifest(agent.store, child)
    assert manifest is not None
    assert len(manifest.files) == 3
    keys = [airlock.held_key(child, held.key) for held in manifest.files]
    assert alice.http.post(f"/tasks/{task_id}:cancel").json() == {}

    def emptied() -> bool:
        gone = airlock.read_manifest(agent.store, child) is None
        return gone and all(agent.store.head(key) is None for key in keys)

    wait_for(emptied, 30, "the airlock to discard the canceled child's held files")
    doc = alice.full(task_id)
    assert doc["state"] == "CANCELED"
    assert all(not log.get("logs") for log in doc["logs"])  # no exit code, no stdout
    results = httpx.get(
        f"{federation.url}/api/v1/tasks/{task_id}/results", headers=alice.http.headers, timeout=30
    ).json()
    assert [tre["files"] for tre in results["tres"]] == [[]]


def test_each_tre_applies_its_own_image_policy_and_reserved_variables(federation, monkeypatch):
    alice = Researcher(federation)
    # The gateway allows any image in the embedded stack; each TRE allows only fivesafes/* and said so.
    foreign = {**analysis(), "executors": [{"image": "docker.io/library/alpine:3", "command": ["true"]}]}
    refused = alice.http.post("/tasks", json=foreign)
    assert refused.status_code == 400
    assert "uk-tre does not allow image 'docker.io/library/alpine:3'" in refused.json()["detail"]
    assert "sg-tre does not allow image 'docker.io/library/alpine:3'" in refused.json()["detail"]
    # A TRE never trusts the gateway (RELIABILITY 19): one the gateway has no policy of refuses itself.
    gateway_forgets_policies(federation, monkeypatch, "uk-tre", "sg-tre")
    doc, _ = alice.wait(alice.submit(foreign), _ended)
    assert doc["state"] == "SYSTEM_ERROR"
    assert all(any("does not allow image" in line for line in log["system_logs"]) for log in doc["logs"])
    reserved = alice.submit(
        {
            **analysis(),
            "executors": [
                {"image": BUSYBOX_IMAGE, "command": ["true"], "env": {"FIVESAFES_AGENT_TOKEN": "x"}}
            ],
        }
    )
    doc, _ = alice.wait(reserved, _ended)
    assert all(any("reserved" in line for line in log["system_logs"]) for log in doc["logs"])


def test_a_tre_cap_tighter_than_the_gateways_rejects_that_child_and_the_tre_keeps_serving(
    federation, monkeypatch
):
    uk = federation.agents["uk-tre"]
    gateway_forgets_policies(federation, monkeypatch, "uk-tre")  # else it would refuse at submission
    uk.policy = uk.policy.model_copy(update={"max_executors": 1})
    alice = Researcher(federation)
    two_steps = alice.submit(
        {**analysis(), "executors": [*analysis()["executors"], {"image": BUSYBOX_IMAGE, "command": ["true"]}]}
    )
    one_step = alice.submit(analysis())
    doc, _ = alice.wait(
        two_steps,
        lambda d: (
            {log["metadata"]["tre"]: log["metadata"]["stage"] for log in d["logs"]}
            == {"uk-tre": "rejected_by_tre", "sg-tre": "awaiting_review"}
        ),
    )
    uk_log = next(log for log in doc["logs"] if log["metadata"]["tre"] == "uk-tre")
    assert "uk-tre refused the task: executors: 2 given, uk-tre accepts at most 1" in uk_log["system_logs"]
    alice.wait(one_step, _held)  # the same TRE runs the next task within its caps


def test_no_secret_of_the_gateway_or_agent_reaches_a_task(federation, monkeypatch):
    canary = "canary-secret-" + os.urandom(6).hex()
    monkeypatch.setenv("FIVESAFES_CANARY", canary)  # in the process that runs gateway and agents
    agent = federation.agents["uk-tre"]
    token = agent.client._token()  # the agent's own bearer token
    script = "env; cat /proc/1/environ | tr '\\0' '\\n'; ls -la /data /outputs; id\n"
    alice = Researcher(federation)
    task_id = alice.submit(analysis(script + "echo x > /outputs/prevalence.csv\n", tags={"tres": "uk-tre"}))
    alice.wait(task_id, _held)
    child = _children(agent)[0]
    manifest = airlock.read_manifest(agent.store, child)
    everything = b"".join(agent.store.get_bytes(airlock.held_key(child, f.key)) for f in manifest.files)
    assert b"FIVESAFES_DEADLINE" in everything  # the dump ran
    for secret in (canary, token, "dev-secret"):
        assert secret.encode() not in everything


# --- the agent as its own process: no listening socket, kill -9 and restart, orphan sweep -----------


def _listening_sockets(pid: int) -> list[str]:
    """TCP/TCP6 sockets in LISTEN state held by `pid` (from its fds and /proc/net)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = str(Path(fd).readlink())
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    listening = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                listening.append(f"{table} {fields[1]}")
    return listening


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *_descendants(int(child))]
    return found


@pytest.fixture
def gateway_only(tmp_path, docker_client):
    images.ensure_busybox_image(docker_client)
    from tests.s3 import start_moto

    s3 = start_moto()
    with devstack.start(tmp_path / "gw") as stack:
        yield stack, s3
    s3.stop()


def _agent_env(stack, s3, home: Path, tre: str = "uk-tre") -> dict[str, str]:
    token = stack.issuer.issue(f"agent-{tre}", ["tre-agent"], audience=stack.settings.oidc_audience, tre=tre)
    return agent_env(stack.url, token, s3, home, tre)


def test_agent_process_listens_on_no_socket_and_survives_kill_9(gateway_only, tmp_path, docker_client):
    stack, s3 = gateway_only
    env = _agent_env(stack, s3, tmp_path / "agent")
    env["FIVESAFES_AGENT_DATABASE_URL"] = (
        f"sqlite:///{tmp_path / 'agent' / 'agent.db'}"  # may hold a password
    )
    log = tmp_path / "agent.log"
    agent = start_agent(env, log)
    try:
        approve_all(env)
        assert _listening_sockets(agent.pid) == []  # RELIABILITY 29: every connection is outbound
        # Processes the agent starts (the check processes' fork server) inherit neither its token
        # nor its airlock key: rules parse untrusted files.
        children = _descendants(agent.pid)
        assert children, "the agent started no fork server for its checks"
        for pid in children:
            environment = Path(f"/proc/{pid}/environ").read_bytes()
            for secret in (
                env["FIVESAFES_AGENT_TOKEN"],
                env["FIVESAFES_AGENT_AIRLOCK_SECRET_KEY"],
                env["FIVESAFES_AGENT_DATABASE_URL"],
            ):
                assert secret.encode() not in environment

        alice = Researcher(stack)
        script = (
            "echo started >> /outputs/prevalence.csv; sleep 4; echo finished >> /outputs/prevalence.csv\n"
        )
        task_id = alice.submit(analysis(script, tags={"tres": "uk-tre"}))
        alice.wait(task_id, lambda d: d["logs"][0]["metadata"]["stage"] == "running")
        agent.send_signal(signal.SIGKILL)  # RELIABILITY 10: kill -9 while the container runs
        agent.wait()
        agent = start_agent(env, log)
        doc, _ = alice.wait(task_id, _held, timeout=60)
        assert doc["logs"][0]["metadata"]["stage"] == "awaiting_review"

        store = s3.store("uk-airlock")
        manifest_keys = [o.key for o in store.list("held/") if o.key.endswith("manifest.json")]
        assert len(manifest_keys) == 1  # one child, held once
        manifest = airlock.Manifest.from_json(store.get_bytes(manifest_keys[0]))
        output = next(f for f in manifest.files if f.kind == "output")
        # Re-attached, not started twice: the container wrote "started" once and then finished.
        assert (
            store.get_bytes(airlock.held_key(manifest.child_id, output.key)).decode() == "started\nfinished\n"
        )
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)


def test_agent_start_sweeps_orphans_and_audits_it(gateway_only, tmp_path, docker_client):
    from sqlalchemy import select

    from fivesafes_tes.agent.loop import deployment_id, open_database
    from fivesafes_tes.audit.tables import AuditRecord
    from fivesafes_tes.db import Database
    from fivesafes_tes.executors import BackendContext, Limits, RunSpec, Step, create
    from fivesafes_tes.settings import AgentSettings

    stack, s3 = gateway_only
    env = _agent_env(stack, s3, tmp_path / "agent")
    db = open_database(AgentSettings(tre="uk-tre", data_dir=Path(env["FIVESAFES_AGENT_DATA_DIR"])))
    mine = deployment_id(db)  # what this agent's previous life labelled its containers with
    db.dispose()
    work = Path(env["FIVESAFES_AGENT_DATA_DIR"]) / "work"
    executor = create("docker", BackendContext(tre="uk-tre", deployment=mine, work_dir=work))
    # Another stack's uk-tre on the same engine: its run is not this agent's to sweep.
    neighbour = create(
        "docker",
        BackendContext(
            tre="uk-tre", deployment=f"another-stack-{uuid.uuid4().hex[:8]}", work_dir=tmp_path / "other"
        ),
    )
    orphan, theirs = (
        "01a00000-0000-7000-8000-0000000000aa",
        f"01a00000-0000-7000-8000-{uuid.uuid4().hex[:12]}",
    )
    for ex, child in ((executor, orphan), (neighbour, theirs)):
        ex.start(
            RunSpec(
                child_id=child,
                attempt=1,
                tre="uk-tre",
                steps=[Step(image=BUSYBOX_IMAGE, command=["sleep", "600"])],
                limits=Limits(runtime_s=600),
            )
        )
    assert orphan in executor.running()
    assert theirs in neighbour.running()
    agent = start_agent(env, tmp_path / "agent.log")
    try:
        deadline = time.monotonic() + 30
        while orphan in executor.running():
            assert time.monotonic() < deadline, "the orphan was not swept"
            time.sleep(0.3)
        assert not docker_client.containers.list(all=True, filters={"label": f"org.fivesafes.child={orphan}"})
        assert neighbour.running() == {theirs: 1}
        assert not (work / orphan).exists()  # its folder went with it

        def sweeps() -> list[AuditRecord]:
            db = Database(f"sqlite:///{tmp_path / 'agent' / 'agent.db'}")
            try:
                with db.read() as session:
                    return list(
                        session.scalars(select(AuditRecord).where(AuditRecord.action == "agent.sweep"))
                    )
            finally:
                db.dispose()

        # The sweep is audited once it has ended, a moment after the containers went.
        found = wait_for(sweeps, 30, "the sweep's audit record")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
        neighbour.cleanup(theirs)
    sweeps = found
    assert orphan in sweeps[0].detail["removed"]
