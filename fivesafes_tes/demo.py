"""`make demo`: the embedded federation, and one analysis walked through it as the people involved would.

A researcher submits one TES task; it runs in the UK and in the Singapore TRE next to each TRE's own
synthetic data; each TRE holds the outputs in its airlock. Along the way: a project a TRE has not
approved waits and is then rejected with a reason, and a long task is canceled.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fivesafes_tes import audit, devstack
from fivesafes_tes.agent import approvals
from fivesafes_tes.client import TesClient
from fivesafes_tes.db import Database
from fivesafes_tes.devimages import BUSYBOX_IMAGE
from fivesafes_tes.egress import airlock

PREVALENCE = """set -e
persons=$(($(wc -l < /data/omop/person.csv) - 1))
diabetes=$(awk -F, 'NR>1 && $3==201826 {print $2}' /data/omop/condition_occurrence.csv | sort -u | wc -l)
echo "persons,diabetes" > /outputs/prevalence.csv
echo "$persons,$diabetes" >> /outputs/prevalence.csv
echo "counted $persons people"
"""


def analysis(script: str, name: str, **tags: str) -> dict:
    return {
        "name": name,
        "description": "People with type 2 diabetes (OMOP concept 201826) among everyone in the TRE.",
        "executors": [{"image": BUSYBOX_IMAGE, "command": ["sh", "/analysis/run.sh"]}],
        "inputs": [{"path": "/analysis/run.sh", "content": script}],
        "outputs": [{"path": "/outputs/prevalence.csv", "url": "s3://results/prevalence.csv"}],
        "resources": {"cpu_cores": 1, "ram_gb": 0.5},
        "tags": tags,
    }


def run(data_dir: Path | None, console: Console, executor: str = "docker") -> int:
    with tempfile.TemporaryDirectory(prefix="fivesafes-demo-") as scratch:
        console.rule("Five Safes TES demo")
        console.print("starting the embedded federation: gateway, token issuer, S3, agents for uk-tre and sg-tre")
        stack = devstack.start(data_dir or Path(scratch), agents=True, executor=executor)
        try:
            return _walk(stack, console)
        finally:
            stack.stop()


def _stages(client: TesClient, task_id: str) -> tuple[str, dict[str, str], dict[str, list[str]]]:
    doc = client.get(task_id, "FULL")
    return (doc["state"], {log["metadata"]["tre"]: log["metadata"]["stage"] for log in doc["logs"]},
            {log["metadata"]["tre"]: log.get("system_logs", []) for log in doc["logs"]})


def _follow(console: Console, client: TesClient, task_id: str, until, timeout: float = 120):  # type: ignore[no-untyped-def]
    last = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, stages, logs = _stages(client, task_id)
        if (state, stages) != last:
            console.print(f"  {state:<13} " + "  ".join(f"{tre}: {stage}" for tre, stage in sorted(stages.items())))
            last = (state, stages)
        if until(stages):
            return state, stages, logs
        time.sleep(0.2)
    raise RuntimeError(f"the demo task did not get there in {timeout:.0f} s; last seen {last}")


def _walk(stack: devstack.DevStack, console: Console) -> int:
    problems: list[str] = []
    with TesClient(stack.url, stack.token("alice")) as alice, TesClient(stack.url, stack.token("bob")) as bob:
        info = alice.service_info()
        console.print(f"gateway {stack.url}: {info['name']} {info['version']} (TES {info['type']['version']})")

        console.rule("1. alice runs one analysis in both TREs")
        key = str(uuid.uuid4())
        task_id = alice.create(analysis(PREVALENCE, "diabetes-prevalence"), idempotency_key=key)
        if alice.create(analysis(PREVALENCE, "diabetes-prevalence"), idempotency_key=key) != task_id:
            problems.append("a retried submission made a second task")
        console.print(f"task {task_id} (a retry with the same Idempotency-Key returned the same id)")
        _follow(console, alice, task_id, lambda s: all(v == "awaiting_review" for v in s.values()))
        table = Table("TRE", "held file", "bytes", "SHA-256", title="held in each TRE's airlock, awaiting review")
        for tre, agent in sorted(stack.agents.items()):
            child = next(c for c in _children(agent))
            manifest = airlock.read_manifest(agent.store, child)
            if manifest is None:
                problems.append(f"{tre} holds no manifest")
                continue
            for held in manifest.files:
                table.add_row(tre, held.container_path or f"step {held.step} {held.kind}", str(held.size),
                              held.sha256[:16] + "…")
        console.print(table)
        console.print("nothing has left either TRE: the files wait for automated checks and an output checker")

        console.rule("2. bob's project has not been approved by uk-tre")
        bob_task = bob.create(analysis(PREVALENCE, "cardio-prevalence"))
        _follow(console, bob, bob_task, lambda s: s.get("uk-tre") == "awaiting_tre_approval")
        uk = stack.agents["uk-tre"]
        with uk.db.write() as session:
            approvals.decide(session, "uk-tre-admin", "cardio", "rejected", reason="no ethics approval on file")
        console.print("uk-tre's admin rejects project cardio: `fivesafes-tes tre reject cardio --reason ...`")
        state, _, logs = _follow(console, bob, bob_task, lambda s: s.get("uk-tre") == "rejected_by_tre")
        console.print(f"bob sees {state}: {logs['uk-tre'][-1]}")
        if state != "SYSTEM_ERROR":
            problems.append("a rejected task did not end SYSTEM_ERROR")

        console.rule("3. alice cancels a long task")
        long_task = alice.create(analysis("sleep 600\n", "long-running", tres="uk-tre"))
        _follow(console, alice, long_task, lambda s: s.get("uk-tre") == "running")
        started = time.monotonic()
        alice.cancel(long_task)
        while uk.executor.running().get(_children(uk)[0]) is not None and time.monotonic() - started < 15:
            time.sleep(0.1)
        console.print(f"canceled: {alice.get(long_task)['state']}, container stopped in {time.monotonic() - started:.1f} s")

    db = Database(stack.settings.effective_database_url)
    with db.read() as session:
        report = audit.verify(session)
    db.dispose()
    console.print(f"gateway audit chain: {'intact' if report.ok else 'BROKEN'}, {report.records} records")
    if not report.ok:
        problems.append("the audit chain is broken")
    console.rule("demo finished" if not problems else "demo found problems: " + "; ".join(problems))
    return 0 if not problems else 1


def _children(agent) -> list[str]:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from fivesafes_tes.agent.tables import LocalChild

    with agent.db.read() as session:
        return [c.child_id for c in session.scalars(select(LocalChild).order_by(LocalChild.created_at.desc()))]
