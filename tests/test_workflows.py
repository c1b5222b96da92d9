"""Whole workflows inside the TRE: the examples in workflows/ submitted with `submit-workflow`, run as one
sandboxed child per TRE, held, approved by each TRE's checker, and released; nothing else leaves."""

from __future__ import annotations

import csv
import importlib.util
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from fivesafes_tes import devstack
from fivesafes_tes.cli import app
from fivesafes_tes.egress.store import ObjectStore
from fivesafes_tes.workflow_runner import main as runner_main
from fivesafes_tes.workflow_runner import publish
from fivesafes_tes.workflows import WorkflowError, engine_for, read_workflow, workflow_task
from tests import images

ROOT = Path(__file__).resolve().parents[1] / "workflows"
TES = "/ga4gh/tes/v1"
SNAKEMAKE = [
    str(ROOT / "snakemake" / "Snakefile"),
    "--output",
    "results/cohort_counts.csv",
    "--output",
    "results/regression.csv",
]
CWL = [str(ROOT / "cwl" / "omop.cwl"), "--job", str(ROOT / "cwl" / "job.yml")]
# What each engine publishes, as the TRE holds it; every other file the run wrote stays inside.
RELEASED = {
    "snakemake": {"/outputs/results/cohort_counts.csv", "/outputs/results/regression.csv"},
    "cwl": {"/outputs/cohort_counts.csv", "/outputs/regression.csv"},
}


def _analysis():
    spec = importlib.util.spec_from_file_location("omop_analysis", ROOT / "analysis" / "omop_analysis.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# --- building the task -------------------------------------------------------------------------------


def test_a_snakemake_task_sends_the_folder_and_declares_only_the_outputs_folder():
    task = workflow_task(
        read_workflow(ROOT / "snakemake" / "Snakefile", ROOT),
        outputs=["results/cohort_counts.csv"],
        config=["min_cell=20"],
        tres=["uk-tre", "sg-tre"],
        project="diabetes-cancer",
    )
    (executor,) = task["executors"]
    assert executor["image"] == "fivesafes/workflow-runner:1"
    assert executor["command"] == [
        "fivesafes-workflow",
        "snakemake",
        "/workflow/snakemake/Snakefile",
        "--output",
        "results/cohort_counts.csv",
        "--cores",
        "1",
        "--config",
        "min_cell=20",
    ]
    sent = {i["path"]: i["content"] for i in task["inputs"]}
    assert sent["/workflow/analysis/omop_analysis.py"] == (ROOT / "analysis" / "omop_analysis.py").read_text()
    assert "/workflow/cwl/omop.cwl" in sent
    assert task["outputs"] == [
        {"name": "final outputs", "path": "/outputs", "type": "DIRECTORY", "url": task["outputs"][0]["url"]}
    ]
    assert task["tags"] == {
        "workflow_engine": "snakemake",
        "tres": "uk-tre,sg-tre",
        "project": "diabetes-cancer",
    }


@pytest.mark.parametrize(
    ("kwargs", "fix"),
    [
        ({}, "--output"),
        ({"outputs": ["/etc/passwd"]}, "relative"),
        ({"outputs": ["../escape.csv"]}, "without '..'"),
        ({"outputs": ["a.csv"], "job": "cwl/job.yml"}, "--job is for CWL"),
        ({"outputs": ["a.csv"], "config": ["novalue"]}, "KEY=VALUE"),
    ],
)
def test_a_snakemake_task_that_cannot_work_is_refused_with_the_fix(kwargs, fix):
    with pytest.raises(WorkflowError, match=fix):
        workflow_task(read_workflow(ROOT / "snakemake" / "Snakefile", ROOT), **kwargs)


def test_a_cwl_task_takes_its_job_from_the_folder_and_no_snakemake_options():
    workflow = read_workflow(ROOT / "cwl" / "omop.cwl", ROOT)
    command = workflow_task(workflow, job="cwl/job.yml")["executors"][0]["command"]
    assert command == ["fivesafes-workflow", "cwl", "/workflow/cwl/omop.cwl", "/workflow/cwl/job.yml"]
    with pytest.raises(WorkflowError, match="must be under the root"):
        workflow_task(workflow, job="elsewhere/job.yml")
    with pytest.raises(WorkflowError, match="for Snakemake"):
        workflow_task(workflow, outputs=["x.csv"])


def test_files_that_cannot_travel_as_content_are_refused(tmp_path):
    (tmp_path / "Snakefile").write_text("rule all:\n    input: []\n")
    (tmp_path / ".snakemake").mkdir()
    (tmp_path / ".snakemake" / "state").write_bytes(b"\xff")  # hidden: never sent
    assert set(read_workflow(tmp_path / "Snakefile").files) == {"Snakefile"}
    (tmp_path / "data.bin").write_bytes(b"\xff\xfe")
    with pytest.raises(WorkflowError, match="not UTF-8"):
        read_workflow(tmp_path / "Snakefile")
    (tmp_path / "data.bin").write_text("")
    with pytest.raises(WorkflowError, match="empty"):
        read_workflow(tmp_path / "Snakefile")
    with pytest.raises(WorkflowError, match="cannot tell the engine"):
        engine_for("main.nf")


def test_the_cli_prints_the_task_it_would_submit():
    result = CliRunner().invoke(
        app, ["submit-workflow", *SNAKEMAKE, "--root", str(ROOT), "--tres", "uk-tre", "--print-task"]
    )
    assert result.exit_code == 0, result.output
    assert '"/workflow/snakemake/Snakefile"' in result.output
    refused = CliRunner().invoke(
        app, ["submit-workflow", str(ROOT / "snakemake" / "Snakefile"), "--print-task"]
    )
    assert refused.exit_code == 2
    assert "--output" in refused.output


# --- the runner inside the image ----------------------------------------------------------------------


def test_the_runner_publishes_only_the_named_targets(tmp_path):
    run, outputs = tmp_path / "run", tmp_path / "outputs"
    (run / "results").mkdir(parents=True)
    (run / "cohort").mkdir()
    (run / "results" / "counts.csv").write_text("n\n12\n")
    (run / "cohort" / "cohort.csv").write_text("person_id\n1\n")
    assert publish(["results/counts.csv", "results/missing.csv"], run, outputs) == ["results/missing.csv"]
    assert [p.relative_to(outputs).as_posix() for p in outputs.rglob("*") if p.is_file()] == [
        "results/counts.csv"
    ]


def test_the_runner_refuses_a_target_outside_its_work_directory(tmp_path, capsys):
    code = runner_main(
        ["snakemake", "/workflow/Snakefile", "--output", "../../etc/passwd"],
        outputs=tmp_path / "out",
        work=tmp_path / "work",
    )
    assert code == 2
    assert "without '..'" in capsys.readouterr().err


def test_the_example_steps_suppress_small_counts_and_fit_the_model(tmp_path):
    steps = _analysis()
    cohort = tmp_path / "cohort.csv"
    rows = [["person_id", "sex", "age", "age_band", "diabetes", "hypertension", "cancer", "hba1c"]]
    for i in range(60):  # hba1c = 5 + 0.1 * age/10 + 0.2 * male + 2 * diabetes, exactly
        age, male, diabetes = 20 + i, i % 2, int(i % 5 == 0)
        hba1c = 5 + 0.1 * age / 10 + 0.2 * male + 2 * diabetes
        band = "18-44" if age <= 44 else "45-64" if age <= 64 else "65+"
        rows.append([str(i), "male" if male else "female", age, band, diabetes, 0, 0, f"{hba1c:.4f}"])
    cohort.write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")
    steps.regression(cohort, tmp_path / "model.csv")
    model = {r["term"]: float(r["estimate"]) for r in csv.DictReader((tmp_path / "model.csv").open())}
    assert model == pytest.approx(
        {"intercept": 5.0, "age_per_decade": 0.1, "male": 0.2, "diabetes": 2.0}, abs=1e-3
    )
    steps.counts(cohort, tmp_path / "counts.csv", 10)
    table = list(csv.DictReader((tmp_path / "counts.csv").open()))
    assert {(r["sex"], r["age_band"]): r["persons"] for r in table}[("female", "18-44")] == "13"
    assert {(r["sex"], r["age_band"]): r["diabetes"] for r in table}[("female", "18-44")] == "<10"


def test_a_current_runner_image_is_not_built_again(monkeypatch):
    import hashlib
    from types import SimpleNamespace

    from fivesafes_tes import devimages

    label = hashlib.sha256(devimages.runner_recipe().encode()).hexdigest()
    current = SimpleNamespace(id="sha256:older", labels={devimages.CONTENT_LABEL: label})
    client = SimpleNamespace(images=SimpleNamespace(get=lambda name: current))
    monkeypatch.setattr(devimages, "_quiet", lambda command: pytest.fail(f"rebuilt: {command}"))
    monkeypatch.setattr(devimages.shutil, "which", lambda name: f"/usr/sbin/{name}")
    assert devimages.ensure_runner_image(client) == devimages.RUNNER_IMAGE
    current.labels[devimages.CONTENT_LABEL] = "an older recipe"
    with pytest.raises(BaseException, match=r"rebuilt: .*debootstrap"):
        devimages.ensure_runner_image(client, log=lambda line: None)


# --- end to end: one child per TRE, review, release ----------------------------------------------------


docker_client = images.docker_client
runner_image = images.runner_image


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_client, runner_image):
    images.ensure_busybox_image(docker_client)
    with devstack.start(
        tmp_path_factory.mktemp("workflows") / "stack", agents=True, executor="docker", report_granularity_s=0
    ) as running:
        yield running


@pytest.mark.parametrize(("engine", "args"), [("snakemake", SNAKEMAKE), ("cwl", CWL)])
def test_a_workflow_runs_whole_in_each_tre_and_only_its_outputs_are_released(stack, engine, args):
    env = {"FIVESAFES_TES_URL": stack.url, "FIVESAFES_TES_TOKEN": stack.token("alice")}
    submitted = CliRunner().invoke(
        app, ["submit-workflow", *args, "--root", str(ROOT), "--tres", "uk-tre,sg-tre"], env=env
    )
    assert submitted.exit_code == 0, submitted.output
    task_id = submitted.output.strip().splitlines()[-1]
    alice = httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {env['FIVESAFES_TES_TOKEN']}"}, timeout=30
    )
    _wait(alice, task_id, {"awaiting_review"})

    for tre in ("uk-tre", "sg-tre"):
        checker = httpx.Client(
            base_url=stack.tre_url(tre),
            headers={"Authorization": f"Bearer {stack.tre_token(f'{tre}-checker', 'output-checker', tre)}"},
            timeout=30,
        )
        (child,) = [c for c in checker.get("/review/v1/children").json() if c["task_id"] == task_id]
        shown = checker.get(f"/review/v1/children/{child['child_id']}").json()
        assert shown["outcome"] == "succeeded", shown
        held = {f["name"] for f in shown["files"] if f["kind"] == "output"}
        assert held == RELEASED[engine]
        airlock = ObjectStore(stack.s3_url, f"{tre}-airlock", "dev", "dev-secret")
        keys = [o.key for o in airlock.list(f"held/{child['child_id']}/")]
        assert keys, keys
        assert not [k for k in keys if k.endswith("/cohort.csv")], keys
        for file in shown["files"]:
            if file["kind"] == "output":
                assert file["verdict"] == "pass", file
            decided = checker.post(
                f"/review/v1/children/{child['child_id']}/decisions",
                json={
                    "name": file["name"],
                    "decision": "approved",
                    "reason": "aggregates above the threshold",
                },
            )
            assert decided.status_code == 200, decided.text
    assert _wait(alice, task_id, {"released"}) == "COMPLETE"

    listing = alice.get(f"/api/v1/tasks/{task_id}/results").json()
    steps = _analysis()
    for tre in listing["tres"]:
        outputs = {f["name"]: f for f in tre["files"] if f["kind"] == "output"}
        assert set(outputs) == RELEASED[engine]
        expected = _expected(steps, stack, tre["tre"])
        for name, file in outputs.items():
            body = alice.get(f"/api/v1/results/{file['id']}").content
            assert body == expected[name.rsplit("/", 1)[-1]], f"{tre['tre']} {name}"
    results = ObjectStore.from_settings(stack.settings.results)
    stored = [o.key for o in results.list(f"released/{task_id}/")]
    assert stored, stored
    assert not [k for k in stored if k.endswith("/cohort.csv")], stored


def _expected(steps, stack, tre: str) -> dict[str, bytes]:
    """The two tables computed here, outside any sandbox, from the TRE's own dataset."""
    dataset = stack.agents[tre].policy.datasets["omop"].path
    scratch = Path(stack.settings.data_dir) / "expected" / tre
    scratch.mkdir(parents=True, exist_ok=True)
    steps.cohort(dataset, scratch / "cohort.csv")
    steps.counts(scratch / "cohort.csv", scratch / "cohort_counts.csv", 10)
    steps.regression(scratch / "cohort.csv", scratch / "regression.csv")
    return {name: (scratch / name).read_bytes() for name in ("cohort_counts.csv", "regression.csv")}


def _wait(http: httpx.Client, task_id: str, stages: set[str], timeout: float = 180) -> str:
    """Poll until every TRE's child is at one of `stages`; return the task's state."""
    deadline = time.monotonic() + timeout
    while True:
        task = http.get(f"{TES}/tasks/{task_id}", params={"view": "FULL"}).json()
        seen = {log["metadata"]["tre"]: log["metadata"]["stage"] for log in task["logs"]}
        if len(seen) == 2 and set(seen.values()) <= stages:
            return task["state"]
        ended = {"withheld", "system_failed", "rejected_by_tre", "executor_failed", "canceled"}
        assert not ended & set(seen.values()), (seen, [log.get("system_logs") for log in task["logs"]])
        assert time.monotonic() < deadline, f"stuck at {seen}"
        time.sleep(0.3)
