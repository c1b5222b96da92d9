"""`make demo`: the embedded stack, and one analysis walked through the TES API as a researcher would."""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fivesafes_tes import audit, devstack
from fivesafes_tes.client import TesClient
from fivesafes_tes.db import Database

ANALYSIS = {
    "name": "diabetes-cancer-prevalence",
    "description": "Counts of people with type 2 diabetes and with cancer, by age band.",
    "executors": [
        {
            "image": "fivesafes/analysis-python:1.0",
            "command": ["python", "/analysis/prevalence.py", "--out", "/outputs/prevalence.csv"],
        }
    ],
    "inputs": [{"path": "/analysis/prevalence.py", "content": "print('prevalence by age band')\n"}],
    "outputs": [{"path": "/outputs/prevalence.csv", "url": "s3://results/prevalence.csv"}],
    "resources": {"cpu_cores": 1, "ram_gb": 2.0},
    "tags": {"project": "diabetes-cancer", "study": "demo"},
}


def run(data_dir: Path | None, console: Console) -> int:
    with tempfile.TemporaryDirectory(prefix="fivesafes-demo-") as scratch:
        stack = devstack.start(data_dir or Path(scratch))
        try:
            return _walk(stack, console)
        finally:
            stack.stop()


def _walk(stack: devstack.DevStack, console: Console) -> int:
    console.rule("Five Safes TES demo")
    console.print(f"gateway on {stack.url}, tokens from its embedded issuer")
    with TesClient(stack.url, stack.token("alice", "researcher")) as alice, TesClient(
        stack.url, stack.token("bob", "researcher")
    ) as bob:
        info = alice.service_info()
        console.print(f"service-info: {info['name']} {info['version']} ({info['type']['artifact']} {info['type']['version']})")

        key = str(uuid.uuid4())
        first = alice.create(ANALYSIS, idempotency_key=key)
        retry = alice.create(ANALYSIS, idempotency_key=key)
        console.print(f"alice submits the analysis: {first}; a retried submit with the same Idempotency-Key "
                      f"returns {'the same task' if retry == first else 'ANOTHER task (bug)'}")
        sweep = [alice.create({**ANALYSIS, "name": f"sensitivity-{n}", "tags": {"study": "sweep"}}) for n in range(3)]
        alice.cancel(sweep[0])
        console.print(f"alice submits a 3-task sweep and cancels {sweep[0]}")

        table = Table("id", "name", "state", "tags", title="alice's tasks (GET /tasks?view=BASIC)")
        for task in alice.list(view="BASIC"):
            table.add_row(task["id"], task.get("name", ""), task["state"], json.dumps(task.get("tags", {})))
        console.print(table)

        only_sweep = [t["id"] for t in alice.list(tag_key=["study"], tag_value=["sweep"], state="QUEUED")]
        console.print(f"filter tag study=sweep, state QUEUED: {len(only_sweep)} tasks")
        hidden = list(bob.list())
        console.print(f"bob lists {len(hidden)} tasks: he sees none of alice's")
        console.print("alice's analysis, FULL view:")
        console.print_json(json.dumps(alice.get(first, "FULL")))

    db = Database(stack.settings.effective_database_url)
    with db.read() as session:
        report = audit.verify(session)
    db.dispose()
    console.print(f"audit chain: {'intact' if report.ok else 'BROKEN'}, {report.records} records")
    ok = retry == first and not hidden and len(only_sweep) == 2 and report.ok
    console.rule("demo finished" if ok else "demo found a problem")
    return 0 if ok else 1
