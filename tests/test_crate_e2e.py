"""The example request crates (ro-crates/) through the whole system: the gateway takes the BagIt zip,
each TRE's agent runs it in the Docker sandbox next to its synthetic OMOP data, holds the outputs in
its S3 airlock, the checks and the TRE's output checker decide, the approved files are released, and
the researcher gets a results crate: a bag that verifies, valid RO-Crate 1.2 (roc-validator, offline),
with the released files and each TRE's SignOff and DisclosureCheck.

One federation serves every test here; both crates run at once in it. One goes in and comes back
through the CLI (`crate zip`, `submit`, `results --crate`), the other through the HTTP API."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from fivesafes_tes import demo, devstack
from fivesafes_tes.agent.record import view
from fivesafes_tes.cli import app
from fivesafes_tes.crates import scaffold
from fivesafes_tes.crates.bagit import open_bag
from fivesafes_tes.crates.record import OURS, summarise
from tests import images
from tests.waiting import wait_for

EXAMPLES = Path(__file__).resolve().parents[1] / "ro-crates"
TES = "/ga4gh/tes/v1"
TRES = ("sg-tre", "uk-tre")
SHP = "https://w3id.org/shp#"
# What each example releases, per TRE, as the record names the files.
RELEASED = {
    "tes-task": {"/outputs/prevalence.csv", "/outputs/by_decade.csv"},
    "cwl-omop": {"/outputs/cohort_counts.csv", "/outputs/regression.csv"},
}
# roc-validator has no 5s-crate profile, and the results crate claims no run-crate profile (its
# instrument is the workflow Dataset 5s-crate names, not software as Process Run Crate requires).
PROFILES = dict.fromkeys(RELEASED, ("ro-crate-1.2",))
ENDED = {"withheld", "system_failed", "rejected_by_tre", "executor_failed", "canceled"}

docker_client = images.docker_client
runner_image = images.runner_image


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_client, runner_image):
    images.ensure_busybox_image(docker_client)
    with devstack.start(
        tmp_path_factory.mktemp("crates") / "stack", agents=True, executor="docker", report_granularity_s=0
    ) as running:
        yield running


def _researcher(stack) -> httpx.Client:
    return httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {stack.token('alice')}"}, timeout=60
    )


def _submit(stack, http: httpx.Client, example: str, tmp_path: Path) -> str:
    """tes-task as ro-crates/README.md tells a researcher (`crate zip`, then `submit`, the CLI);
    cwl-omop by the HTTP call itself (`POST /api/v1/crates`)."""
    if example == "tes-task":
        zipped = tmp_path / "request.zip"
        made = CliRunner().invoke(app, ["crate", "zip", str(EXAMPLES / example), "--out", str(zipped)])
        assert made.exit_code == 0, made.output
        env = {"FIVESAFES_TES_URL": stack.url, "FIVESAFES_TES_TOKEN": stack.token("alice")}
        sent = CliRunner().invoke(app, ["submit", str(zipped)], env=env)
        assert sent.exit_code == 0, sent.output
        return sent.output.strip().splitlines()[-1]
    body = io.BytesIO()
    scaffold.zip_directory(EXAMPLES / example, body)
    response = http.post(
        "/api/v1/crates", content=body.getvalue(), headers={"Content-Type": "application/zip"}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _results_crate(stack, http: httpx.Client, example: str, task_id: str, path: Path) -> None:
    """tes-task's by `fivesafes-tes results ID --crate` (which verifies it too); cwl-omop's by
    `GET /api/v1/tasks/ID/crate`."""
    if example == "tes-task":
        env = {"FIVESAFES_TES_URL": stack.url, "FIVESAFES_TES_TOKEN": stack.token("alice")}
        got = CliRunner().invoke(app, ["results", task_id, "--crate", "--out", str(path)], env=env)
        assert got.exit_code == 0, got.output
        assert "verified" in got.output
        return
    response = http.get(f"/api/v1/tasks/{task_id}/crate")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/zip")
    path.write_bytes(response.content)


def _stages(http: httpx.Client, task_id: str) -> dict[str, str]:
    task = http.get(f"{TES}/tasks/{task_id}", params={"view": "FULL"}).json()
    seen = {log["metadata"]["tre"]: log["metadata"]["stage"] for log in task["logs"]}
    assert not ENDED & set(seen.values()), (seen, [log.get("system_logs") for log in task["logs"]])
    return seen


def _all_at(http: httpx.Client, task_id: str, stage: str) -> bool:
    seen = _stages(http, task_id)
    return sorted(seen) == list(TRES) and set(seen.values()) == {stage}


def _signed_off(http: httpx.Client, task_id: str) -> bool:
    record = http.get(f"/api/v1/tasks/{task_id}/crate/metadata")
    assert record.status_code == 200, record.text
    return {tre.sign_off for tre in summarise(record.json())} == {"completed"}


def _approve_everything(stack, task_id: str) -> None:
    """Each TRE's output checker approves every held file of the task, with a reason."""
    for tre in TRES:
        checker = httpx.Client(
            base_url=stack.tre_url(tre),
            headers={"Authorization": f"Bearer {stack.tre_token(f'{tre}-checker', 'output-checker', tre)}"},
            timeout=30,
        )
        (child,) = [c for c in checker.get("/review/v1/children").json() if c["task_id"] == task_id]
        for file in checker.get(f"/review/v1/children/{child['child_id']}").json()["files"]:
            decided = checker.post(
                f"/review/v1/children/{child['child_id']}/decisions",
                json={"name": file["name"], "decision": "approved", "reason": "aggregates only"},
            )
            assert decided.status_code == 200, decided.text


def _check_the_crates_checkers_see(stack, validator, example: str, task_id: str, tmp_path: Path) -> None:
    """Each TRE's output checker reads the request's activity crate: the request crate as submitted
    (its own name), the gateway's checks of it and this TRE's sign-off, as valid RO-Crate 1.2."""
    submitted = json.loads((EXAMPLES / example / "data" / "ro-crate-metadata.json").read_text())
    title = {e["@id"]: e for e in submitted["@graph"]}["./"]["name"]
    for tre in TRES:
        checker = httpx.Client(
            base_url=stack.tre_url(tre),
            headers={"Authorization": f"Bearer {stack.tre_token(f'{tre}-checker', 'output-checker', tre)}"},
            timeout=30,
        )
        (child,) = [c for c in checker.get("/review/v1/children").json() if c["task_id"] == task_id]
        answer = checker.get(f"/review/v1/children/{child['child_id']}/crate")
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/ld+json"
        crate = answer.json()
        graph = {e["@id"]: e for e in crate["@graph"]}
        assert graph["./"]["name"] == title, (tre, graph["./"])
        kinds = [_additional(graph[r]) for r in _ids(graph["./"]["mentions"]) if r in graph]
        assert {"CheckValue", "ValidationCheck", "SignOff", "DisclosureCheck"} <= set(kinds), kinds
        (sign_off,) = [
            graph[r] for r in _ids(graph["./"]["mentions"]) if _additional(graph.get(r, {})) == "SignOff"
        ]
        assert sign_off["actionStatus"] == "http://schema.org/CompletedActionStatus", sign_off
        assert {f"#fivesafes-tes-run-in-{t}" for t in TRES} & set(graph) == {f"#fivesafes-tes-run-in-{tre}"}
        shown = {a.name: a.recorded for a in view(crate).actions}
        assert shown[sign_off["name"]] is True
        assert False in shown.values(), shown  # the request's own CreateAction: the submitter's words
        folder = tmp_path / f"{example}-{tre}-request"
        folder.mkdir()
        (folder / "ro-crate-metadata.json").write_text(answer.text)
        result = validator.check(folder, "ro-crate-1.2")
        assert result.passed, f"{example} at {tre}: {result.issues}"


@pytest.fixture(scope="module")
def validator(tmp_path_factory):
    from tests import rocrate_validation

    return rocrate_validation.Validator.seeded(tmp_path_factory.mktemp("roc-validator"))


@pytest.mark.parametrize("example", sorted(RELEASED))
def test_each_example_request_crate_is_valid_ro_crate_1_2(validator, tmp_path, example):
    result = validator.check(EXAMPLES / example / "data", "ro-crate-1.2")
    assert result.passed, result.issues


def test_each_example_crate_runs_everywhere_and_comes_back_as_a_valid_results_crate(
    stack, validator, tmp_path
):
    alice = _researcher(stack)
    tasks = {example: _submit(stack, alice, example, tmp_path) for example in sorted(RELEASED)}  # at once
    for example, task_id in tasks.items():
        wait_for(lambda t=task_id: _all_at(alice, t, "awaiting_review"), 300, f"{example} held for review")
        _check_the_crates_checkers_see(stack, validator, example, task_id, tmp_path)
        _approve_everything(stack, task_id)
    for example, task_id in tasks.items():
        wait_for(lambda t=task_id: _all_at(alice, t, "released"), 120, f"{example} released")

    for example, task_id in tasks.items():
        listing = alice.get(f"/api/v1/tasks/{task_id}/results").json()
        released = {(tre["tre"], f["name"]): f["sha256"] for tre in listing["tres"] for f in tre["files"]}
        for tre in TRES:
            assert {name for (where, name) in released if where == tre} >= RELEASED[example], (tre, released)

        # The decisions that let each TRE run the task reached the gateway before anything was
        # released (the agent syncs on the tick after staging with decisions still unsent).
        assert _signed_off(alice, task_id), example
        path = tmp_path / f"{example}-results.zip"
        _results_crate(stack, alice, example, task_id, path)
        with open_bag(path) as bag:
            metadata = bag.metadata()
            carried = {
                p: f.sha256 or hashlib.sha256(bag.read(p, f.size)).hexdigest() for p, f in bag.payload.items()
            }
        text = json.dumps(metadata)
        internal = [stack.s3_url, *(stack.tre_url(tre) for tre in TRES)]
        assert not [url for url in internal if url in text], "an internal URL in the results crate"
        assert "eyJ" not in text, "a token in the results crate"

        # Every file each TRE released is in the bag, with the SHA-256 it was released with, and is a
        # result of the requested run; per TRE, the sign-off and the disclosure check are recorded.
        graph = {e["@id"]: e for e in metadata["@graph"]}
        (run,) = [
            graph[r]
            for r in _ids(graph["./"]["mentions"])
            if r in graph and _typed(graph[r], "CreateAction") and not r.startswith(OURS)
        ]
        assert run["actionStatus"] == "http://schema.org/CompletedActionStatus"
        # The crate named "Alice Example" (#requester); the record names who submitted it, as intake did.
        (agent,) = _ids(run["agent"])
        assert graph[agent]["name"] == "alice"
        assert "#requester" not in graph
        results = {graph[r]["sha256"]: unquote(r) for r in _ids(run.get("result"))}
        assert set(results) == set(released.values())
        for sha256, where in results.items():
            assert carried[where] == sha256, where
        summary = {tre.tre: tre for tre in summarise(metadata)}
        assert sorted(summary) == list(TRES)
        for tre in TRES:
            assert (summary[tre].run, summary[tre].sign_off, summary[tre].disclosure) == (
                "completed",
                "completed",
                "completed",
            ), summary[tre]
            names = {name for _, name, _ in summary[tre].files}
            assert names == {name for (where, name) in released if where == tre}
        kinds = [_additional(graph[r]) for r in _ids(graph["./"]["mentions"]) if r in graph]
        for kind in ("CheckValue", "ValidationCheck"):
            assert kind in kinds, kinds
        assert kinds.count("SignOff") == len(TRES), kinds
        assert kinds.count("DisclosureCheck") >= len(TRES), kinds

        for profile in PROFILES[example]:
            result = validator.check_bag(path, tmp_path / f"{example}-{profile}", profile)
            assert result.passed, f"{example} results crate against {profile}: {result.issues}"


def test_the_demo_submits_the_example_crate_and_prints_its_record(stack):
    problems: list[str] = []
    console = Console(record=True, width=160)
    task_id = demo.walk_crate(stack, console, stack.token("alice"), problems)
    assert not problems, problems
    assert task_id
    shown = console.export_text()
    for tre in TRES:
        assert tre in shown
    assert "/outputs/prevalence.csv" in shown


def _list(value) -> list:
    return value if isinstance(value, list) else [] if value is None else [value]


def _ids(value) -> list[str]:
    return [v["@id"] if isinstance(v, dict) else v for v in _list(value)]


def _typed(entity: dict, name: str) -> bool:
    return name in _list(entity.get("@type"))


def _additional(entity: dict) -> str:
    return next((k.removeprefix(SHP) for k in _ids(entity.get("additionalType")) if k.startswith(SHP)), "")
