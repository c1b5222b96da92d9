"""`make demo`: the embedded federation, and one analysis walked through it as the people involved would.

A researcher submits one TES task; it runs in the UK and in the Singapore TRE next to each TRE's own
synthetic data; each TRE holds the outputs in its airlock, runs the automated disclosure checks, and
its output checker decides; the approved files reach the researcher, who combines the two TREs'
counts. The same analysis then goes in as a Five Safes request crate (ro-crates/tes-task), and the
results crate comes back with the record of every decision.

Along the way: a project a TRE has not approved waits and is then rejected with a reason,
and a long task is canceled.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fivesafes_tes import audit, devstack
from fivesafes_tes.client import TesClient
from fivesafes_tes.db import Database
from fivesafes_tes.devimages import BUSYBOX_IMAGE

EXAMPLE_CRATES = Path(__file__).resolve().parent.parent / "ro-crates"
DEMO_CRATE = "tes-task"

PREVALENCE = """set -e
persons=$(($(wc -l < /data/omop/person.csv) - 1))
diabetes=$(awk -F, 'NR>1 && $3==201826 {print $2}' /data/omop/condition_occurrence.csv | sort -u | wc -l)
echo "persons,diabetes" > /outputs/prevalence.csv
echo "$persons,$diabetes" >> /outputs/prevalence.csv
awk -F, 'NR>1 {c[$2","int($3/10)*10]++}
  END {print "gender_concept_id,birth_decade,count"; for (k in c) print k","c[k]}' \
  /data/omop/person.csv > /outputs/by_decade.csv
echo "counted $persons people"
"""
CHECKER = "demo-checker"


def analysis(script: str, name: str, **tags: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": "People with type 2 diabetes (OMOP concept 201826) among everyone in the TRE.",
        "executors": [{"image": BUSYBOX_IMAGE, "command": ["sh", "/analysis/run.sh"]}],
        "inputs": [{"path": "/analysis/run.sh", "content": script}],
        "outputs": [
            {"path": "/outputs/prevalence.csv", "url": "s3://results/prevalence.csv"},
            {"path": "/outputs/by_decade.csv", "url": "s3://results/by_decade.csv"},
        ],
        "resources": {"cpu_cores": 1, "ram_gb": 0.5},
        "tags": tags,
    }


def run(data_dir: Path | None, console: Console, executor: str = "docker") -> int:
    with tempfile.TemporaryDirectory(prefix="fivesafes-demo-") as scratch:
        console.rule("Five Safes TES demo")
        console.print(
            "starting the embedded federation: gateway, token issuer, S3, agents for uk-tre and sg-tre"
        )
        stack = devstack.start(data_dir or Path(scratch), agents=True, executor=executor)
        try:
            return _walk(stack, console)
        finally:
            stack.stop()


def _stages(client: TesClient, task_id: str) -> tuple[str, dict[str, str], dict[str, list[str]]]:
    doc = client.get(task_id, "FULL")
    return (
        doc["state"],
        {log["metadata"]["tre"]: log["metadata"]["stage"] for log in doc["logs"]},
        {log["metadata"]["tre"]: log.get("system_logs", []) for log in doc["logs"]},
    )


def _follow(console: Console, client: TesClient, task_id: str, until, timeout: float = 120):  # type: ignore[no-untyped-def]
    last = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, stages, logs = _stages(client, task_id)
        if (state, stages) != last:
            console.print(
                f"  {state:<13} " + "  ".join(f"{tre}: {stage}" for tre, stage in sorted(stages.items()))
            )
            last = (state, stages)
        if until(stages):
            return state, stages, logs
        time.sleep(0.2)
    raise RuntimeError(f"the demo task did not get there in {timeout:.0f} s; last seen {last}")


def _walk(stack: devstack.DevStack, console: Console) -> int:
    problems: list[str] = []
    alice_token = stack.token("alice")
    with TesClient(stack.url, alice_token) as alice, TesClient(stack.url, stack.token("bob")) as bob:
        info = alice.service_info()
        console.print(
            f"gateway {stack.url}: {info['name']} {info['version']} (TES {info['type']['version']})"
        )

        console.rule("1. alice runs one analysis in both TREs")
        key = str(uuid.uuid4())
        task_id = alice.create(analysis(PREVALENCE, "diabetes-prevalence"), idempotency_key=key)
        if alice.create(analysis(PREVALENCE, "diabetes-prevalence"), idempotency_key=key) != task_id:
            problems.append("a retried submission made a second task")
        console.print(f"task {task_id} (a retry with the same Idempotency-Key returned the same id)")
        _follow(console, alice, task_id, lambda s: all(v == "awaiting_review" for v in s.values()))
        table = Table(
            "TRE",
            "held file",
            "bytes",
            "automated checks",
            "first finding",
            title="held in each TRE's airlock, awaiting review",
        )
        for tre, agent in sorted(stack.agents.items()):
            for file in _as_checker(stack, tre, "GET", f"/review/v1/children/{_children(agent)[0]}")["files"]:
                table.add_row(
                    tre,
                    file["name"],
                    str(file["size"]),
                    file["verdict"],
                    file["findings"][0] if file["findings"] else "",
                )
        console.print(table)
        console.print("nothing has left either TRE yet: each TRE's output checker decides on every file")

        console.rule("2. each TRE's output checker decides; the approved files are released")
        console.print(
            "each checker uses their own token (FIVESAFES_TRE_TOKEN) with "
            "`fivesafes-tes review approve|reject CHILD FILE --reason ...`; here, the same API calls:"
        )
        _review(stack, task_id)
        state, _, _ = _follow(
            console,
            alice,
            task_id,
            lambda s: all(v in ("released", "partially_released", "withheld") for v in s.values()),
        )
        if state != "COMPLETE":
            problems.append(f"the released task is {state}, not COMPLETE")
        combined = _download_and_combine(stack, alice_token, task_id, console, problems)
        console.print(combined)

        console.rule("3. alice sends the same kind of analysis as a Five Safes request crate")
        walk_crate(stack, console, alice_token, problems)

        console.rule("4. bob's project has not been approved by uk-tre")
        bob_task = bob.create(analysis(PREVALENCE, "cardio-prevalence"))
        _follow(console, bob, bob_task, lambda s: s.get("uk-tre") == "awaiting_tre_approval")
        uk = stack.agents["uk-tre"]
        _tre_call(
            stack,
            stack.tre_token("uk-tre-admin", "tre-admin", "uk-tre"),
            "uk-tre",
            "PUT",
            "/tre/v1/projects/cardio/decision",
            json={"decision": "rejected", "reason": "no ethics approval on file"},
        )
        console.print("uk-tre's admin rejects project cardio: `fivesafes-tes tre reject cardio --reason ...`")
        state, _, logs = _follow(console, bob, bob_task, lambda s: s.get("uk-tre") == "rejected_by_tre")
        console.print(f"bob sees {state}: {logs['uk-tre'][-1]}")
        if state != "SYSTEM_ERROR":
            problems.append("a rejected task did not end SYSTEM_ERROR")

        console.rule("5. alice cancels a long task")
        long_task = alice.create(analysis("sleep 600\n", "long-running", tres="uk-tre"))
        _follow(console, alice, long_task, lambda s: s.get("uk-tre") == "running")
        started = time.monotonic()
        alice.cancel(long_task)
        while uk.executor.running().get(_children(uk)[0]) is not None and time.monotonic() - started < 15:
            time.sleep(0.1)
        stopped_s = time.monotonic() - started
        console.print(f"canceled: {alice.get(long_task)['state']}, container stopped in {stopped_s:.1f} s")

    db = Database(stack.settings.effective_database_url)
    with db.read() as session:
        report = audit.verify(session)
    db.dispose()
    console.print(f"gateway audit chain: {'intact' if report.ok else 'BROKEN'}, {report.records} records")
    if not report.ok:
        problems.append("the audit chain is broken")
    console.rule("demo finished" if not problems else "demo found problems: " + "; ".join(problems))
    return 0 if not problems else 1


def walk_crate(stack: devstack.DevStack, console: Console, token: str, problems: list[str]) -> str:
    """Submit the example request crate ro-crates/tes-task, have each TRE's checker decide, and print
    the summary of the results crate the researcher gets back. Returns the task id."""
    import io

    import httpx

    from fivesafes_tes.crates import scaffold

    zipped = io.BytesIO()
    scaffold.zip_directory(EXAMPLE_CRATES / DEMO_CRATE, zipped)
    console.print(
        f"the example crate ro-crates/{DEMO_CRATE} (a BagIt bag: the task, its script as a file, the "
        "request's metadata), sent as `fivesafes-tes submit` sends it and fetched back as "
        "`fivesafes-tes results ID --crate` does; here, the same calls:"
    )
    http = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    submitted = http.post(
        "/api/v1/crates", content=zipped.getvalue(), headers={"Content-Type": "application/zip"}
    )
    if submitted.status_code != 201:
        problems.append(f"the example crate was refused: {submitted.status_code} {submitted.text}")
        return ""
    task_id: str = submitted.json()["id"]
    console.print(f"request crate accepted: task {task_id}")
    with TesClient(stack.url, token) as alice:
        _follow(console, alice, task_id, lambda s: all(v == "awaiting_review" for v in s.values()))
        _review(stack, task_id)
        _follow(
            console,
            alice,
            task_id,
            lambda s: all(v in ("released", "partially_released", "withheld") for v in s.values()),
        )
    response = http.get(f"/api/v1/tasks/{task_id}/crate")
    if response.status_code != 200:
        problems.append(f"no results crate: {response.status_code} {response.text[:200]}")
        return task_id
    console.print(results_crate_summary(response.content, problems))
    return task_id


def results_crate_summary(zipped: bytes, problems: list[str]) -> Table:
    """What `fivesafes-tes results ID --crate` prints: per TRE, the run, the sign-off, the disclosure
    check and the released files, once the bag's manifests and each file's SHA-256 are verified."""
    from fivesafes_tes.crates.bagit import BagRefused, open_bag
    from fivesafes_tes.crates.record import summarise

    table = Table(
        "TRE", "run", "sign-off", "disclosure", "released files (SHA-256)", title="the results crate's record"
    )
    with tempfile.TemporaryDirectory(prefix="fivesafes-crate-") as scratch:
        path = Path(scratch) / "results.zip"
        path.write_bytes(zipped)
        try:
            with open_bag(path) as bag:
                record = bag.metadata()
                carried = {p: f.sha256 for p, f in bag.payload.items()}
        except BagRefused as exc:
            problems.append(f"the results crate does not verify: {exc}")
            return table
    for tre in summarise(record):
        for where, _, sha256 in tre.files:
            if carried.get(where) != sha256:
                problems.append(f"{where} in the results crate does not match its SHA-256")
        files = "\n".join(f"{name}  {sha256[:12]}…" for _, name, sha256 in tre.files) or "-"
        table.add_row(tre.tre, tre.run, tre.sign_off, tre.disclosure, files)
    return table


def _review(stack: devstack.DevStack, task_id: str) -> None:
    """Each TRE's output checker approves what passed the automated checks and rejects the rest."""
    for tre in sorted(stack.agents):
        children = _as_checker(stack, tre, "GET", "/review/v1/children")
        for child in [c["child_id"] for c in children if c["task_id"] == task_id]:
            for file in _as_checker(stack, tre, "GET", f"/review/v1/children/{child}")["files"]:
                failed = file["verdict"] == "fail"
                _as_checker(
                    stack,
                    tre,
                    "POST",
                    f"/review/v1/children/{child}/decisions",
                    json={
                        "name": file["name"],
                        "decision": "rejected" if failed else "approved",
                        "reason": "failed an automated disclosure check"
                        if failed
                        else "aggregate counts above the threshold",
                    },
                )


def _as_checker(stack: devstack.DevStack, tre: str, method: str, path: str, **kwargs):  # type: ignore[no-untyped-def]
    return _tre_call(stack, stack.tre_token(CHECKER, "output-checker", tre), tre, method, path, **kwargs)


def _tre_call(stack: devstack.DevStack, token: str, tre: str, method: str, path: str, **kwargs):  # type: ignore[no-untyped-def]
    """A call to TRE `tre`'s own API, as the person whose token it is (what the CLI does)."""
    import httpx

    response = httpx.request(
        method, stack.tre_url(tre) + path, headers={"Authorization": f"Bearer {token}"}, timeout=60, **kwargs
    )
    if response.status_code >= 400:
        raise RuntimeError(f"{tre} refused {method} {path}: {response.status_code} {response.text}")
    return response.json()


def _download_and_combine(
    stack: devstack.DevStack, token: str, task_id: str, console: Console, problems: list[str]
) -> Table:
    """What the researcher gets: each TRE's released files (SHA-256 checked) and one combined table."""
    import csv
    import hashlib
    import io

    import httpx

    http = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    listing = http.get(f"/api/v1/tasks/{task_id}/results").json()
    decisions = Table("TRE", "file", "decision", "reason", title="the output checkers' decisions")
    combined = Table(
        "TRE",
        "persons",
        "with type 2 diabetes",
        "prevalence",
        title="released results, combined across the TREs",
    )
    total_persons = total_diabetes = 0
    for tre in listing["tres"]:
        for entry in (tre["disclosure"] or {}).get("files", []):
            decisions.add_row(
                tre["tre"],
                entry["name"],
                entry["decision"],
                "; ".join(d["reason"] for d in entry["decisions"]),
            )
        for reason in (tre["disclosure"] or {}).get("withheld_reasons", []):
            decisions.add_row(tre["tre"], "(the others)", "withheld", reason)
        for file in tre["files"]:
            body = http.get(f"/api/v1/results/{file['id']}").content
            if hashlib.sha256(body).hexdigest() != file["sha256"]:
                problems.append(f"{file['name']} from {tre['tre']} failed its SHA-256 check")
            if file["name"] == "/outputs/prevalence.csv":
                row = next(csv.DictReader(io.StringIO(body.decode())))
                persons, diabetes = int(row["persons"]), int(row["diabetes"])
                total_persons, total_diabetes = total_persons + persons, total_diabetes + diabetes
                combined.add_row(tre["tre"], str(persons), str(diabetes), f"{100 * diabetes / persons:.1f}%")
    combined.add_row(
        "all TREs",
        str(total_persons),
        str(total_diabetes),
        f"{100 * total_diabetes / max(total_persons, 1):.1f}%",
        style="bold",
    )
    console.print(decisions)
    if not total_persons:
        problems.append("no prevalence table was released")
    return combined


def _children(agent) -> list[str]:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from fivesafes_tes.agent.tables import LocalChild

    with agent.db.read() as session:
        return [
            c.child_id for c in session.scalars(select(LocalChild).order_by(LocalChild.created_at.desc()))
        ]
