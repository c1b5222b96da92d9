"""The activity record (`crates.record`, gathered by `submission.records`) and the results crate
(`GET /api/v1/tasks/{id}/crate`, `fivesafes-tes results ID --crate`).

Every submission has a record; it follows the researcher view (RELIABILITY 31): before a release
nothing a task controls shows in it, after a release exactly the released files (with their SHA-256)
and the decisions on them. Requests crates' client AssessActions never survive (RELIABILITY 5). The
records and results crates are checked against every 5s-crate 0.4 MUST the gateway controls, and
validated by roc-validator (PyPI) offline against RO-Crate 1.2.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from fivesafes_tes.audit.tables import AuditRecord
from fivesafes_tes.crates import record as record_module
from fivesafes_tes.crates.bagit import open_bag
from fivesafes_tes.crates.record import (
    FIVE_SAFES_PROFILE,
    OURS,
    RO_CRATE_SPEC,
    SHP,
    activity_record,
    summarise,
)
from fivesafes_tes.db.base import utcnow
from fivesafes_tes.gateway.context import app_context
from fivesafes_tes.submission import records
from fivesafes_tes.submission.tables import Child, RequestCrate
from fivesafes_tes.submission.tasks import Actor
from tests import rocrate_validation
from tests.conftest import Gateway, results_store_settings

TES = "/ga4gh/tes/v1"
AGENT = "/agent/v1"
SECRET = "10000001,8507,1978"  # what the task read: it must never show before a release
KEEP = b"region,n_patients\nnorth,120\nsouth,95\n"


# --- a federation where things happen, through the agent API as agents drive it ------------------


def agent(gw: Gateway, tre: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.token(f'agent-{tre}', 'tre-agent', tre=tre)}"}


def submit(gw: Gateway, user: str = "alice", tres: str = "uk-tre,sg-tre") -> str:
    task = {
        "name": "cohort counts",
        "executors": [{"image": "alpine", "command": ["sh", "-c", "cut -d, -f1 /data/omop/person.csv"]}],
        "outputs": [{"path": "/outputs", "url": "s3://results/out", "type": "DIRECTORY"}],
        "tags": {"tres": tres, "project": "alpha"},
    }
    response = gw.client.post(f"{TES}/tasks", json=task, headers=gw.headers(user))
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def lease(gw: Gateway, tre: str) -> str:
    grants = gw.client.post(f"{AGENT}/leases", json={"wait_s": 0}, headers=agent(gw, tre)).json()["leases"]
    return str(grants[0]["child_id"])


def event(gw: Gateway, tre: str, child: str, seq: int, stage: str, **extra: Any) -> None:
    body = {"attempt": 1, "seq": seq, "stage": stage, **extra}
    response = gw.client.post(f"{AGENT}/children/{child}/events", json=body, headers=agent(gw, tre))
    assert response.status_code == 200, response.text


def decide(gw: Gateway, tre: str, *decisions: dict[str, Any]) -> None:
    at = {"decided_at": "2026-12-06T19:00:00Z"}
    response = gw.client.post(
        f"{AGENT}/decisions", json={"decisions": [{**at, **d} for d in decisions]}, headers=agent(gw, tre)
    )
    assert response.status_code == 200, response.text


def held_run(gw: Gateway, secret: str = SECRET, code: int = 112) -> tuple[str, str, str]:
    """alice's task in uk-tre (approved, run, held for review, with a run report that must not show)
    and sg-tre (undecided). Returns the task and the two children."""
    decide(
        gw,
        "uk-tre",
        {
            "project": "alpha",
            "username": "",
            "decision": "approved",
            "decided_by": "uk-admin",
            "reason": "ethics ok",
        },
        {"project": "alpha", "username": "alice", "decision": "approved", "decided_by": "uk-admin"},
    )
    task_id = submit(gw)
    uk, sg = lease(gw, "uk-tre"), lease(gw, "sg-tre")
    event(
        gw,
        "sg-tre",
        sg,
        1,
        "awaiting_tre_approval",
        message="waiting for sg-tre's admins to approve project alpha",
    )
    run = {"steps": [{"exit_code": code, "start_time": "2026-01-01T00:00:00.123456Z"}] * (code % 3 + 1)}
    event(gw, "uk-tre", uk, 1, "staging", message="uk-tre approved project alpha and user alice")
    event(gw, "uk-tre", uk, 2, "running", message=f"started {secret}")
    event(gw, "uk-tre", uk, 3, "checking", message=f"exit codes: {code}", report=run)
    event(gw, "uk-tre", uk, 4, "awaiting_review", message=f"{code} file(s) held", report={"held_files": code})
    return task_id, uk, sg


def disclosure(approved: bool) -> dict[str, Any]:
    files = [
        {
            "name": f"/outputs/person-{SECRET}.csv",
            "sha256": "0" * 64,
            "size": 4096,
            "decision": "rejected",
            "checks": {
                "verdict": "fail",
                "rules": [
                    {
                        "rule": "record_level",
                        "version": "1.0",
                        "verdict": "fail",
                        "findings": [{"message": f"row {SECRET}"}],
                    }
                ],
            },
            "decisions": [{"checker": "uk-checker", "decision": "rejected", "reason": "record-level data"}],
        }
    ]
    if approved:
        files.append(
            {
                "name": "/outputs/keep.csv",
                "sha256": hashlib.sha256(KEEP).hexdigest(),
                "size": len(KEEP),
                "decision": "approved",
                "checks": {
                    "verdict": "pass",
                    "rules": [{"rule": "small_cell", "version": "2.1", "verdict": "pass", "findings": []}],
                },
                "decisions": [
                    {
                        "checker": "uk-checker",
                        "decision": "approved",
                        "reason": "an aggregate count",
                        "at": "2026-12-06T21:00:00Z",
                    }
                ],
            }
        )
    return {"policy": {"required_approvals": 1}, "files": files, "withheld_reasons": ["record-level data"]}


def release_keep(gw: Gateway, child: str, *, end: bool = True) -> None:
    """uk-tre's checkers released keep.csv and withheld the file with the person in it (with `end`
    False: keep.csv has arrived at the gateway, but the child has not ended yet)."""
    approved = {
        "name": "/outputs/keep.csv",
        "kind": "output",
        "sha256": hashlib.sha256(KEEP).hexdigest(),
        "size": len(KEEP),
    }
    assert (
        gw.client.put(
            f"{AGENT}/children/{child}/approvals", json={"files": [approved]}, headers=agent(gw, "uk-tre")
        ).status_code
        == 200
    )
    uploaded = gw.client.put(
        f"{AGENT}/children/{child}/files",
        params=dict(approved.items()),
        content=KEEP,
        headers=agent(gw, "uk-tre"),
    )
    assert uploaded.status_code == 200, uploaded.text
    if end:
        report = {"disclosure": disclosure(True), "steps": [{"exit_code": 112}], "released_logs": {}}
        event(gw, "uk-tre", child, 5, "partially_released", report=report)


@pytest.fixture
def gw(database_url: str, tmp_path: Path, s3_endpoint: Any) -> Any:
    bucket = s3_endpoint.store().bucket
    gateway = Gateway(database_url, tmp_path / "data", **results_store_settings(s3_endpoint, bucket))
    yield gateway
    gateway.close()


def record_of(gw: Gateway, task_id: str, user: str = "alice") -> dict[str, Any]:
    response = gw.client.get(f"/api/v1/tasks/{task_id}/crate/metadata", headers=gw.headers(user))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/ld+json")
    return dict(response.json())


def entities(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["@id"]: e for e in record["@graph"]}


def ids(value: Any) -> list[str]:
    return [v["@id"] for v in (value if isinstance(value, list) else [value]) if isinstance(v, dict)]


def types(entity: dict[str, Any]) -> list[str]:
    kind = entity.get("@type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def additional(entity: dict[str, Any]) -> str:
    return str((entity.get("additionalType") or {}).get("@id", ""))


def of_kind(record: dict[str, Any], shp: str) -> list[dict[str, Any]]:
    return [e for e in record["@graph"] if additional(e) == f"{SHP}{shp}"]


def assert_nothing_task_controlled(text: str) -> None:
    """What the task did (its run, what it read, its unreleased outputs, the findings) is not in it."""
    for leaked in (
        SECRET,
        "/outputs/person",
        "file(s)",
        "record_level",
        "findings",
        '"4096"',
        " 4096",
        "112 ",
    ):
        assert leaked not in text, leaked
    assert "exit" not in text.lower()  # no exit code, in any words


# --- the 5s-crate 0.4 MUSTs the gateway controls ----------------------------------------------------


def five_safes_musts(record: dict[str, Any]) -> list[str]:
    """Every MUST of the profile that holds of a record the gateway writes; each problem in words."""
    problems = []
    graph = entities(record)
    if len(graph) != len(record["@graph"]):
        problems.append("an @id appears twice")
    descriptor = graph.get("ro-crate-metadata.json", {})
    if ids(descriptor.get("conformsTo")) != [RO_CRATE_SPEC] or ids(descriptor.get("about")) != ["./"]:
        problems.append("the descriptor must conform to RO-Crate 1.2 and be about ./")
    root = graph.get("./")
    if root is None or "Dataset" not in types(root):
        return [*problems, "the root data entity must be ./, a Dataset"]
    if FIVE_SAFES_PROFILE not in ids(root.get("conformsTo")):
        problems.append("the root must conform to 5s-crate 0.4")
    for key in ("name", "description", "datePublished", "license"):
        if key not in root:
            problems.append(f"the root has no {key}")
    [main] = ids(root.get("mainEntity")) or [""]
    workflow = graph.get(main, {})
    if "Dataset" not in types(workflow) or not any(
        i.startswith("https://w3id.org/workflowhub/workflow-ro-crate")
        for i in ids(workflow.get("conformsTo"))
    ):
        problems.append("mainEntity must be a Workflow RO-Crate Dataset")
    [project] = ids(root.get("sourceOrganization")) or [""]
    if "Project" not in types(graph.get(project, {})):
        problems.append("sourceOrganization must be a Project")
    mentions = set(ids(root.get("mentions")))
    actions = [e for e in graph.values() if "CreateAction" in types(e)]
    if not mentions & {a["@id"] for a in actions}:
        problems.append("the root must mention a CreateAction")
    for action in actions:
        if ids(action.get("instrument")) != [main]:
            problems.append(f"{action['@id']}: instrument must be mainEntity")
        agents = ids(action.get("agent"))
        if len(agents) != 1 or "Person" not in types(graph.get(agents[0], {})):
            problems.append(f"{action['@id']}: agent must be one Person")
        for item in ids(action.get("object")):
            if item not in graph:
                problems.append(f"{action['@id']}: input {item} has no entity")
        for result in ids(action.get("result")):
            entity = graph.get(result, {})
            if not {"File", "Dataset"} & set(types(entity)) or result not in ids(root.get("hasPart")):
                problems.append(f"{action['@id']}: result {result} must be a File in the root's hasPart")
            if len(str(entity.get("sha256", ""))) != 64:
                problems.append(f"{result}: no SHA-256")
    for entity in graph.values():
        if "AssessAction" in types(entity):
            if entity["@id"] not in mentions:
                problems.append(f"{entity['@id']}: an AssessAction the root does not mention")
            if not entity.get("name"):
                problems.append(f"{entity['@id']}: an AssessAction without a name")
            if not str(entity.get("actionStatus", "")).startswith("http://schema.org/"):
                problems.append(f"{entity['@id']}: no actionStatus")
            for agent_id in ids(entity.get("agent")):
                agent_entity = graph.get(agent_id, {})
                if "SoftwareApplication" in types(agent_entity) and "Organization" not in types(
                    graph.get(next(iter(ids(agent_entity.get("provider"))), ""), {})
                ):
                    problems.append(
                        f"{agent_id}: a SoftwareApplication agent must have a provider Organization"
                    )
        if entity["@id"].startswith(("../", "/")) or "/../" in entity["@id"]:
            problems.append(f"{entity['@id']}: refers outside the crate")
    return problems


# --- the bare TES task's record, stage by stage -----------------------------------------------------


def test_a_bare_tes_tasks_record_before_release_shows_nothing_the_task_controls(gw):
    task_id, _uk, _ = held_run(gw)
    record = record_of(gw, task_id)
    text = json.dumps(record)
    assert_nothing_task_controlled(text)
    assert five_safes_musts(record) == []
    graph = entities(record)
    root = graph["./"]
    assert ids(graph[ids(root["mainEntity"])[0]]["hasPart"]) == ["workflow/tes-task.json"]
    assert "hasPart" not in root or all(not i.startswith(("outputs/", "logs/")) for i in ids(root["hasPart"]))
    run = graph[f"{OURS}run-in-uk-tre"]
    assert run["actionStatus"] == "http://schema.org/ActiveActionStatus"  # awaiting review
    assert "result" not in run
    assert "endTime" not in run
    assert graph[f"{OURS}run-in-sg-tre"]["actionStatus"] == "http://schema.org/PotentialActionStatus"
    [check] = [c for c in of_kind(record, "DisclosureCheck") if c["@id"].endswith("uk-tre")]
    assert check["actionStatus"] == "http://schema.org/ActiveActionStatus"
    assert ids(check["object"]) == ["./"]
    assert of_kind(record, "CheckValue") == []  # no bag was received
    [validation] = of_kind(record, "ValidationCheck")
    assert validation["actionStatus"] == "http://schema.org/CompletedActionStatus"
    person = graph[ids(graph[f"{OURS}run-{task_id}"]["agent"])[0]]
    assert person["name"] == "alice"
    assert person["@id"].startswith("#agent-")
    assert "idp" not in person["@id"]


def test_two_held_tasks_that_did_different_things_have_the_same_record_up_to_ids_and_times(gw):
    """RELIABILITY 31 for the record: what differs between two runs (what they read, their exit codes,
    how many steps and files, what their agents said) leaves no trace in it before a release."""
    first, _, _ = held_run(gw, SECRET, 112)
    second, _, _ = held_run(gw, "20000002,8532,1991", 3)

    def masked(task_id: str) -> str:
        text = json.dumps(record_of(gw, task_id), sort_keys=True).replace(task_id, "<task>")
        return re.sub(r"\d{4}-\d\d-\d\dT[0-9:.]+Z", "<time>", text)

    assert masked(first) == masked(second)


def test_each_tres_sign_off_is_its_admins_decisions_on_the_project_and_the_person(gw):
    task_id, _, _ = held_run(gw)
    graph = entities(record_of(gw, task_id))
    uk, sg = graph[f"{OURS}signoff-uk-tre"], graph[f"{OURS}signoff-sg-tre"]
    assert additional(uk) == f"{SHP}SignOff"
    assert uk["actionStatus"] == "http://schema.org/CompletedActionStatus"
    assert uk["name"] == "Sign-off by uk-tre of the project and the person: approved"
    assert uk["description"] == "project alpha: approved by uk-admin (ethics ok); alice: approved by uk-admin"
    assert [graph[a]["name"] for a in ids(uk["agent"])] == ["uk-admin"]
    assert "endTime" in uk
    assert sg["actionStatus"] == "http://schema.org/PotentialActionStatus"
    assert "endTime" not in sg
    decide(
        gw, "sg-tre", {"project": "alpha", "username": "", "decision": "approved", "decided_by": "sg-admin"}
    )
    sg = entities(record_of(gw, task_id))[f"{OURS}signoff-sg-tre"]
    assert sg["actionStatus"] == "http://schema.org/PotentialActionStatus"  # the person: undecided
    assert sg["description"] == "project alpha: approved by sg-admin; alice: undecided"
    decide(
        gw,
        "sg-tre",
        {"project": "alpha", "username": "", "decision": "approved", "decided_by": "sg-admin"},
        {
            "project": "alpha",
            "username": "alice",
            "decision": "rejected",
            "decided_by": "sg-admin",
            "reason": "training expired",
        },
    )
    sg = entities(record_of(gw, task_id))[f"{OURS}signoff-sg-tre"]
    assert sg["actionStatus"] == "http://schema.org/FailedActionStatus"
    assert "alice: rejected by sg-admin (training expired)" in sg["description"]


def test_after_a_partial_release_the_record_has_the_released_file_and_the_decisions_only(gw):
    task_id, uk, _ = held_run(gw)
    release_keep(gw, uk)
    record = record_of(gw, task_id)
    text = json.dumps(record)
    assert_nothing_task_controlled(text)
    assert five_safes_musts(record) == []
    graph = entities(record)
    keep = graph["outputs/uk-tre/outputs/keep.csv"]
    assert keep["sha256"] == hashlib.sha256(KEEP).hexdigest()
    assert keep["contentSize"] == str(len(KEEP))
    assert keep["encodingFormat"] == "text/csv"
    run = graph[f"{OURS}run-in-uk-tre"]
    assert ids(run["result"]) == ["outputs/uk-tre/outputs/keep.csv"]
    assert run["actionStatus"] == "http://schema.org/CompletedActionStatus"
    assert "endTime" in run
    assert "startTime" in run
    [check] = [c for c in of_kind(record, "DisclosureCheck") if c["@id"].endswith("uk-tre")]
    assert check["actionStatus"] == "http://schema.org/CompletedActionStatus"
    assert check["description"] == "required_approvals: 1; reasons for withholding: record-level data"
    decisions = [e for e in record["@graph"] if e["@id"].startswith(f"{OURS}review-uk-tre")]
    assert [d["name"] for d in decisions] == ["uk-checker approved /outputs/keep.csv: an aggregate count"]
    verdicts = [e["name"] for e in record["@graph"] if e["@id"].startswith(f"{OURS}verdict-uk-tre")]
    assert verdicts == ["Rule small_cell 2.1 on /outputs/keep.csv: pass"]
    assert ids(graph["./"]["publisher"]) == [f"{OURS}tre-uk-tre"]
    # the requested run as a whole: the task is QUEUED while sg-tre's admins have not decided
    assert graph[f"{OURS}run-{task_id}"]["actionStatus"] == "http://schema.org/PotentialActionStatus"
    assert ids(graph[f"{OURS}run-{task_id}"]["result"]) == ["outputs/uk-tre/outputs/keep.csv"]


def test_a_file_that_arrived_before_its_tre_ended_the_release_is_not_in_the_record_yet(gw, tmp_path):
    """The TRE may still stop a release it has begun (a changed file blocks it): until the child ends,
    what arrived is not the researcher's, in the record or in the results crate."""
    task_id, uk, _ = held_run(gw)
    release_keep(gw, uk, end=False)
    record = record_of(gw, task_id)
    assert "keep.csv" not in json.dumps(record)
    held = tmp_path / "held.zip"
    held.write_bytes(crate_of(gw, task_id))
    with open_bag(held) as bag:
        assert sorted(bag.payload) == ["ro-crate-metadata.json", "workflow/tes-task.json"]


def test_a_full_rejection_records_a_failed_disclosure_check_and_no_results(gw):
    task_id, uk, _ = held_run(gw)
    report = {"disclosure": disclosure(False), "steps": [{"exit_code": 112}]}
    event(gw, "uk-tre", uk, 5, "withheld", report=report)
    record = record_of(gw, task_id)
    assert_nothing_task_controlled(json.dumps(record))
    assert five_safes_musts(record) == []
    graph = entities(record)
    [check] = [c for c in of_kind(record, "DisclosureCheck") if c["@id"].endswith("uk-tre")]
    assert check["actionStatus"] == "http://schema.org/FailedActionStatus"
    assert check["name"] == "Disclosure check of the outputs at uk-tre: every output withheld"
    assert "result" not in graph[f"{OURS}run-in-uk-tre"]
    assert not [i for i in graph if i.startswith(("outputs/", "logs/"))]


def test_another_projects_task_is_not_found_and_the_attempt_audited(gw):
    task_id = submit(gw)
    for path in (f"/api/v1/tasks/{task_id}/crate", f"/api/v1/tasks/{task_id}/crate/metadata"):
        mine = gw.client.get(path, headers=gw.headers("carol"))  # same project: visible, as in TES
        assert mine.status_code == 200, mine.text
        foreign = gw.client.get(path, headers=gw.headers("bob"))
        unknown = gw.client.get(path.replace(task_id, "0" * 36), headers=gw.headers("bob"))
        assert foreign.status_code == unknown.status_code == 404
        assert foreign.json()["detail"].replace(task_id, "0" * 36) == unknown.json()["detail"]
    with gw.db.read() as session:
        denied = [
            (r.actor, r.object, r.detail)
            for r in session.scalars(select(AuditRecord).where(AuditRecord.action == "access.denied"))
        ]
    assert (
        denied
        == [("bob", f"task:{task_id}", {"exists": True}), ("bob", f"task:{'0' * 36}", {"exists": False})] * 2
    )


def test_the_facts_are_gathered_with_the_tasks_visibility(gw):
    task_id = submit(gw)
    with gw.db.read() as session:
        from fivesafes_tes.auth.tables import User

        alice = session.scalar(select(User).where(User.username == "alice"))
        facts = records.task_facts(session, Actor(alice.id, "alice"), task_id)
    assert [t.name for t in facts.tres] == ["sg-tre", "uk-tre"]
    assert facts.request is None
    assert facts.project == "alpha"


# --- a request crate's record -----------------------------------------------------------------------


def request_metadata() -> dict[str, Any]:
    """A request crate's metadata as intake keeps it, with a forged sign-off left in by mistake and an
    entity posing as one of the gateway's own."""
    return {
        "@context": "https://w3id.org/ro/crate/1.2/context",
        "@graph": [
            {
                "@id": "ro-crate-metadata.json",
                "@type": "CreativeWork",
                "about": {"@id": "./"},
                "conformsTo": {"@id": "https://w3id.org/ro/crate/1.2"},
            },
            {
                "@id": "./",
                "@type": "Dataset",
                "name": "Cohort counts",
                "description": "A request",
                "conformsTo": {"@id": FIVE_SAFES_PROFILE},
                "mainEntity": {"@id": "workflow/"},
                "sourceOrganization": {"@id": "#project-alpha"},
                "mentions": [{"@id": "#query-1"}, {"@id": "#forged-signoff"}],
                "hasPart": [{"@id": "workflow/"}, {"@id": "inputs/regions.csv"}],
            },
            {"@id": FIVE_SAFES_PROFILE, "@type": "Profile", "name": "Five Safes RO-Crate profile"},
            {
                "@id": "workflow/",
                "@type": "Dataset",
                "name": "Cohort counts workflow",
                "conformsTo": {"@id": "https://w3id.org/workflowhub/workflow-ro-crate/1.0"},
            },
            {"@id": "inputs/regions.csv", "@type": "File", "name": "regions"},
            {
                "@id": "#query-1",
                "@type": "CreateAction",
                "name": "Execute the cohort counts",
                "actionStatus": "http://schema.org/PotentialActionStatus",
                "agent": {"@id": "#alice"},
                "instrument": {"@id": "workflow/"},
                "object": [{"@id": "inputs/regions.csv"}],
            },
            {"@id": "#alice", "@type": "Person", "name": "alice", "memberOf": [{"@id": "#project-alpha"}]},
            {"@id": "#project-alpha", "@type": "Project", "name": "alpha"},
            {
                "@id": "#forged-signoff",
                "@type": "AssessAction",
                "additionalType": {"@id": f"{SHP}SignOff"},
                "name": "Sign-off: approved",
                "actionStatus": "http://schema.org/CompletedActionStatus",
            },
            {"@id": f"{OURS}tre-uk-tre", "@type": "Organization", "name": "not the real uk-tre"},
        ],
    }


def as_crate(gw: Gateway, task_id: str) -> None:
    with gw.db.write() as session:
        session.add(
            RequestCrate(
                task_id=task_id,
                external_identifier="urn:uuid:9796155a-fe44-4614-89b8-71945f718ffb",
                zip_sha512="a" * 128,
                zip_size=2048,
                language="tes",
                metadata_doc=request_metadata(),
                checks=[
                    {
                        "check": "bagit",
                        "passed": True,
                        "detail": "3 payload files, sha512 and sha256 verified",
                    },
                    {"check": "profile", "passed": True, "detail": "every MUST a submitter controls holds"},
                ],
                stripped_assess_actions=1,
                received_at=utcnow(),
            )
        )


def test_a_request_crates_record_grows_from_what_intake_kept_and_no_client_assessaction_survives(gw):
    task_id, uk, _ = held_run(gw)
    as_crate(gw, task_id)
    before = record_of(gw, task_id)
    assert_nothing_task_controlled(json.dumps(before))
    release_keep(gw, uk)
    record = record_of(gw, task_id)
    assert five_safes_musts(record) == []
    graph = entities(record)
    assert "#forged-signoff" not in graph
    assert "#forged-signoff" not in json.dumps(record)
    assert graph[f"{OURS}tre-uk-tre"]["name"] == "UK"
    [signoff] = [e for e in of_kind(record, "SignOff") if e["@id"].endswith("uk-tre")]
    assert signoff["@id"] == f"{OURS}signoff-uk-tre"
    run = graph["#query-1"]
    assert ids(run["result"]) == ["outputs/uk-tre/outputs/keep.csv"]
    assert run["actionStatus"] == "http://schema.org/PotentialActionStatus"  # sg-tre still waits
    assert ids(run["agent"]) == ["#alice"]
    # the request's own files stay in the request crate: named absolutely, from its zip's SHA-512
    [regions] = ids(run["object"])
    assert regions.startswith("arcp://ni,sha-512;")
    assert regions.endswith("/inputs/regions.csv")
    assert ids(graph["./"]["mainEntity"])[0].endswith("/workflow/")
    [check] = of_kind(record, "CheckValue")
    assert check["name"] == "BagIt checksums of the request crate: OK"
    assert check["actionStatus"] == "http://schema.org/CompletedActionStatus"
    [validation] = of_kind(record, "ValidationCheck")
    assert "1 AssessAction(s) the request carried were removed" in validation["description"]
    assert ids(graph["./"]["mentions"])[0] == "#query-1"


def test_a_crate_sent_through_intake_has_a_record_that_validates_its_musts(gw):
    """The real path: POST /api/v1/crates (H2's intake), then the record of the task it made."""
    from tests import test_crate_intake as intake

    meta = intake.metadata()
    meta["@graph"].append(
        {
            "@id": "#forged",
            "@type": "AssessAction",
            "additionalType": {"@id": f"{SHP}SignOff"},
            "name": "Sign-off: approved",
            "actionStatus": "http://schema.org/CompletedActionStatus",
        }
    )
    meta["@graph"][1]["mentions"] = [{"@id": "#run-1"}, {"@id": "#forged"}]
    response = gw.client.post(
        "/api/v1/crates",
        params={"tres": "uk-tre"},
        content=intake.crate(meta),
        headers={**gw.headers("alice"), "Content-Type": "application/zip"},
    )
    assert response.status_code == 201, response.text
    task_id = response.json()["id"]
    record = record_of(gw, task_id)
    assert five_safes_musts(record) == []
    assert "#forged" not in json.dumps(record)
    [check] = of_kind(record, "CheckValue")
    assert check["actionStatus"] == "http://schema.org/CompletedActionStatus"
    graph = entities(record)
    assert graph["#run-1"]["actionStatus"] == "http://schema.org/PotentialActionStatus"
    assert graph[ids(graph["#run-1"]["agent"])[0]]["name"] == "alice"


# --- the results crate ------------------------------------------------------------------------------


def crate_of(gw: Gateway, task_id: str, user: str = "alice") -> bytes:
    response = gw.client.get(f"/api/v1/tasks/{task_id}/crate", headers=gw.headers(user))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["link"] == '<https://w3id.org/ro/crate>; rel="profile"'
    return response.content


def test_the_results_crate_verifies_and_holds_exactly_the_released_files(gw, tmp_path):
    task_id, uk, _ = held_run(gw)
    held = tmp_path / "held.zip"
    held.write_bytes(crate_of(gw, task_id))
    with open_bag(held) as bag:
        assert sorted(bag.payload) == ["ro-crate-metadata.json", "workflow/tes-task.json"]
        assert_nothing_task_controlled(json.dumps(bag.metadata()))
    release_keep(gw, uk)
    released = tmp_path / "released.zip"
    released.write_bytes(crate_of(gw, task_id))
    with open_bag(released) as bag:
        assert sorted(bag.payload) == [
            "outputs/uk-tre/outputs/keep.csv",
            "ro-crate-metadata.json",
            "workflow/tes-task.json",
        ]
        with bag.open("outputs/uk-tre/outputs/keep.csv") as handle:
            assert handle.read() == KEEP
        assert bag.payload["outputs/uk-tre/outputs/keep.csv"].sha256 == hashlib.sha256(KEEP).hexdigest()
        record = bag.metadata()
        assert bag.external_identifier.startswith("urn:uuid:")
        document = json.loads(bag.read("workflow/tes-task.json", 1 << 20))
    assert document["executors"][0]["image"] == "alpine"
    assert document["tags"]["tres"] == "uk-tre,sg-tre"
    assert five_safes_musts(record) == []
    assert_nothing_task_controlled(json.dumps(record))
    [(uk_part)] = [t for t in summarise(record) if t.tre == "uk-tre"]
    assert uk_part.files == (
        ("outputs/uk-tre/outputs/keep.csv", "/outputs/keep.csv", hashlib.sha256(KEEP).hexdigest()),
    )
    names = zipfile.ZipFile(released).namelist()
    text = b"".join(zipfile.ZipFile(released).read(n) for n in names if not n.endswith("/"))
    for internal in (
        b"released/",
        b"/api/v1/results",
        b"agent/v1",
        b"Bearer",
        gw.settings.public_url.encode(),
    ):
        assert internal not in text, internal
    with gw.db.read() as session:
        downloads = list(session.scalars(select(AuditRecord).where(AuditRecord.action == "download")))
    assert [(d.actor, d.outcome) for d in downloads] == [("alice", "ok")]


def test_a_released_file_that_changed_in_the_store_stops_the_crate(gw, s3_endpoint):
    task_id, uk, _ = held_run(gw)
    release_keep(gw, uk)
    store = app_context(gw.app).results_store
    [key] = [o.key for o in store.list("")]
    s3_endpoint.raw_client().put_object(Bucket=store.bucket, Key=key, Body=b"region,n_patients\nnorth,1\n")
    response = gw.client.get(f"/api/v1/tasks/{task_id}/crate", headers=gw.headers())
    assert response.status_code == 503
    assert "integrity" in response.json()["detail"]


def test_results_crate_from_the_cli_is_verified_and_summarised(gw, tmp_path, monkeypatch):
    from fivesafes_tes.cli import app

    task_id, uk, _ = held_run(gw)
    release_keep(gw, uk)
    body = crate_of(gw, task_id)

    class Streamed:
        status_code = 200

        def __init__(self, content: bytes) -> None:
            self.content = content

        def __enter__(self) -> Streamed:
            return self

        def __exit__(self, *_: object) -> None:
            pass

        def read(self) -> bytes:
            return self.content

        def iter_bytes(self) -> Any:
            yield from (self.content[i : i + 4096] for i in range(0, len(self.content), 4096))

    import httpx

    monkeypatch.setattr(httpx, "stream", lambda *a, **k: Streamed(body))
    out = tmp_path / "crate.zip"
    result = CliRunner().invoke(app, ["results", task_id, "--crate", "--out", str(out), "--token", "t"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == body
    assert "uk-tre" in result.output
    assert "/outputs/keep.csv" in result.output
    assert "1 file SHA-256(s) verified" in result.output
    tampered = _tamper(body)
    monkeypatch.setattr(httpx, "stream", lambda *a, **k: Streamed(tampered))
    bad = tmp_path / "bad.zip"
    result = CliRunner().invoke(app, ["results", task_id, "--crate", "--out", str(bad), "--token", "t"])
    assert result.exit_code == 1
    assert "failed verification" in result.output
    assert not bad.exists()


def _tamper(body: bytes) -> bytes:
    """The same zip with the released file's bytes changed (and nothing else)."""
    source = zipfile.ZipFile(io.BytesIO(body))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("outputs/keep.csv"):
                data = data.replace(b"120", b"121")
            target.writestr(info, data)
    return out.getvalue()


# --- roc-validator, offline ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def validator(tmp_path_factory: pytest.TempPathFactory) -> rocrate_validation.Validator:
    return rocrate_validation.Validator.seeded(tmp_path_factory.mktemp("roc-validator"))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_roc_validator_passes_the_records_and_the_results_crate(gw, validator, tmp_path):
    task_id, uk, _ = held_run(gw)
    held = validator.check_record(record_of(gw, task_id), tmp_path / "held")
    assert held.passed, held.issues
    as_crate(gw, task_id)
    release_keep(gw, uk)
    crate = validator.check_record(record_of(gw, task_id), tmp_path / "crate")
    assert crate.passed, crate.issues
    zipped = tmp_path / "results.zip"
    zipped.write_bytes(crate_of(gw, task_id))
    results = validator.check_bag(zipped, tmp_path / "unzipped")
    assert results.passed, results.issues


def test_roc_validator_fails_a_broken_record(validator, tmp_path):
    """The validation is real: a record without its root data entity's required properties fails."""
    record = activity_record(_facts())
    assert validator.check_record(record, tmp_path / "good").passed
    broken = json.loads(json.dumps(record))
    root = next(e for e in broken["@graph"] if e["@id"] == "./")
    root["@type"] = "CreativeWork"
    descriptor = next(e for e in broken["@graph"] if e["@id"] == "ro-crate-metadata.json")
    descriptor["about"] = {"@id": "#elsewhere"}
    result = validator.check_record(broken, tmp_path / "broken")
    assert not result.passed
    assert result.issues


def _facts() -> record_module.TaskFacts:
    return record_module.TaskFacts(
        task_id="0190f3c1-0000-7000-8000-000000000001",
        name="cohort counts",
        state="QUEUED",
        created_at="2026-12-06T20:00:00Z",
        document={"executors": [{"image": "alpine", "command": ["true"]}]},
        submitter="alice",
        submitter_id="urn:uuid:4f1a3d2e-6b1e-5c0a-9a2f-1f2e3d4c5b6a",
        project="alpha",
        project_title="Alpha",
        generated_at="2026-12-06T20:01:00Z",
        tres=(record_module.TreFacts(name="uk-tre", title="UK", stage="received"),),
    )


# --- each family of the record's rules, broken once --------------------------------------------------


def test_the_must_checks_catch_each_broken_family():
    """The checks above are not vacuous: break each rule the record follows and they say so."""
    good = activity_record(
        replace(
            _facts(),
            state="COMPLETE",
            tres=(
                record_module.TreFacts(
                    name="uk-tre",
                    title="UK",
                    stage="released",
                    reviewed=True,
                    released=(
                        record_module.ReleasedFact("uk-tre", 1, "/outputs/keep.csv", "output", 3, "a" * 64),
                    ),
                ),
            ),
        )
    )
    assert five_safes_musts(good) == []

    def broken(change: Any) -> list[str]:
        record = json.loads(json.dumps(good))
        change(entities(record), record)
        return five_safes_musts(record)

    def drop_mention(graph: dict[str, Any], _: Any) -> None:
        graph["./"]["mentions"] = graph["./"]["mentions"][:-2]

    def drop_part(graph: dict[str, Any], _: Any) -> None:
        graph["./"]["hasPart"] = [p for p in graph["./"]["hasPart"] if not p["@id"].startswith("outputs/")]

    def no_provider(graph: dict[str, Any], _: Any) -> None:
        del graph[f"{OURS}gateway"]["provider"]

    def other_instrument(graph: dict[str, Any], _: Any) -> None:
        graph[f"{OURS}run-in-uk-tre"]["instrument"] = {"@id": "workflow/tes-task.json"}

    def old_spec(graph: dict[str, Any], _: Any) -> None:
        graph["ro-crate-metadata.json"]["conformsTo"] = {"@id": "https://w3id.org/ro/crate/1.1"}

    for change in (drop_mention, drop_part, no_provider, other_instrument, old_spec):
        assert broken(change), change.__name__


def test_records_are_read_back_by_ro_crate_py(tmp_path):
    """An independent RO-Crate reader (ro-crate-py) finds the root, the main entity and the run."""
    from rocrate.rocrate import ROCrate

    folder = tmp_path / "crate"
    folder.mkdir()
    (folder / "ro-crate-metadata.json").write_text(json.dumps(activity_record(_facts())))
    crate = ROCrate(folder)
    assert crate.root_dataset["name"] == "cohort counts"
    assert crate.mainEntity.id == "workflow/"
    assert next(a.id for a in crate.get_by_type("CreateAction")).startswith(OURS)


def test_a_child_row_is_only_read_through_the_researcher_view(gw):
    """Run-derived columns a child keeps (its report) never reach the facts before a release."""
    task_id, uk, _ = held_run(gw)
    with gw.db.write() as session:
        child = session.get(Child, uk)
        child.report = {**child.report, "steps": [{"exit_code": 112}], "released_logs": {"0.stdout": SECRET}}
    assert_nothing_task_controlled(json.dumps(record_of(gw, task_id)))
