"""`fivesafes-tes crate new` and the example request crates in ro-crates/: what it writes meets the
Five Safes profile (our own intake checks), verifies as a bag, round-trips through a bag folder, and
the checked-in examples are what `crate new` makes today from their sources."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fivesafes_tes.cli import app
from fivesafes_tes.crates import scaffold
from fivesafes_tes.crates.bagit import open_bag
from fivesafes_tes.crates.profile import Submitter, read_request

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "ro-crates"
WORKFLOWS = REPO / "workflows"
ALICE = Submitter(
    username="alice", subject="alice", issuer="https://idp.example", projects=("diabetes-cancer",)
)
# How each example is made: the arguments of `fivesafes-tes crate new` (ro-crates/README.md shows the same).
# The TES example is made from ro-crates/tes-task.json (the analysis `make demo` sends as a TES task);
# the CWL example from workflows/, which it must carry as it is.
EXAMPLE_ARGS = {
    "tes-task": [
        "--tes",
        str(EXAMPLES / "tes-task.json"),
        "--name",
        "diabetes-prevalence",
        "--project",
        "diabetes-cancer",
        "--person-name",
        "Alice Example",
        "--license",
        "https://spdx.org/licenses/Apache-2.0",
    ],
    "cwl-omop": [
        "--cwl",
        str(WORKFLOWS / "cwl" / "omop.cwl"),
        "--job",
        str(WORKFLOWS / "cwl" / "job.yml"),
        "--root",
        str(WORKFLOWS),
        "--name",
        "omop-cohort-counts-and-hba1c-model",
        "--project",
        "diabetes-cancer",
        "--person-name",
        "Alice Example",
        "--license",
        "https://spdx.org/licenses/Apache-2.0",
    ],
}


def _new(tmp_path: Path, example: str, out: str = "request.zip") -> Path:
    target = tmp_path / out
    result = CliRunner().invoke(app, ["crate", "new", *EXAMPLE_ARGS[example], "--out", str(target)])
    assert result.exit_code == 0, result.output
    return target


def _graph(metadata: dict) -> dict[str, dict]:
    return {entity["@id"]: entity for entity in metadata["@graph"]}


def _ids(value) -> list[str]:
    return [v["@id"] for v in (value if isinstance(value, list) else [value])]


@pytest.mark.parametrize("example", sorted(EXAMPLE_ARGS))
def test_crate_new_writes_a_bag_our_intake_accepts(tmp_path, example):
    zipped = _new(tmp_path, example)
    with open_bag(zipped) as bag:
        assert bag.external_identifier.startswith("urn:uuid:")
        request = read_request(bag, ALICE)
        metadata = bag.metadata()
        payload = set(bag.payload)
    assert request.project == "diabetes-cancer"
    assert request.stripped_assess_actions == 0
    assert [c["check"] for c in request.checks] == ["bagit", "profile"]

    graph = _graph(metadata)
    assert metadata["@context"] == "https://w3id.org/ro/crate/1.2/context"
    assert _ids(graph["ro-crate-metadata.json"]["conformsTo"]) == ["https://w3id.org/ro/crate/1.2"]
    root = graph["./"]
    assert _ids(root["conformsTo"]) == [scaffold.PROFILE]
    assert graph[scaffold.PROFILE]["@type"] == "Profile"
    for required in ("name", "description", "datePublished", "license"):
        assert root.get(required), required
    (main,) = _ids(root["mainEntity"])
    assert main == request.main_entity == "workflow/"
    assert graph[main]["@type"] == "Dataset"
    assert _ids(graph[main]["conformsTo"]) == [scaffold.WORKFLOW_RO_CRATE]
    parts = _ids(graph[main]["hasPart"])
    assert parts
    assert all(p.startswith("workflow/") and p in payload for p in parts)
    (project,) = _ids(root["sourceOrganization"])
    assert graph[project]["@type"] == "Project"
    assert graph[project]["name"] == "diabetes-cancer"

    (action_id,) = _ids(root["mentions"])
    assert action_id == request.create_action
    action = graph[action_id]
    assert action["@type"] == "CreateAction"
    assert action["actionStatus"] == "http://schema.org/PotentialActionStatus"
    assert _ids(action["instrument"]) == [main]
    (agent,) = _ids(action["agent"])
    assert graph[agent]["@type"] == "Person"
    assert graph[agent]["name"] == "Alice Example"
    assert project in _ids(graph[agent]["memberOf"])
    for input_id in _ids(action.get("object", [])):
        (parameter,) = _ids(graph[input_id]["exampleOfWork"])
        assert graph[parameter]["@type"] == "FormalParameter"
    assert action_id.removeprefix("#request-") not in bag.external_identifier  # two identifiers, not one


def test_the_cwl_crate_carries_the_job_as_inputs_and_the_workflow_folder_as_it_is(tmp_path):
    with open_bag(_new(tmp_path, "cwl-omop")) as bag:
        graph = _graph(bag.metadata())
        sent = {path: bag.read(path, 1 << 20) for path in bag.payload}
    action = next(e for e in graph.values() if e.get("@type") == "CreateAction")
    (omop,) = _ids(action["object"])
    assert graph[omop]["name"] == "omop"
    assert graph[omop]["value"] == "/data/omop"
    main = graph[_ids(graph["workflow/"]["mainEntity"])[0]]
    assert main["@id"] == "workflow/cwl/omop.cwl"
    assert "ComputationalWorkflow" in main["@type"]
    assert _ids(main["programmingLanguage"]) == ["https://w3id.org/workflowhub/workflow-ro-crate#cwl"]
    assert (
        sent["workflow/analysis/omop_analysis.py"]
        == (WORKFLOWS / "analysis" / "omop_analysis.py").read_bytes()
    )
    assert "workflow/cwl/job.yml" not in sent  # its values are the CreateAction's object


def test_what_runs_is_the_task_or_the_workflow_it_was_made_from(tmp_path):
    """Through intake's own reading (crates.workflow): the TES crate runs the task as written, its
    script filled back in from the crate's file; the CWL crate runs what submit-workflow would send."""
    from fivesafes_tes.crates.workflow import task_from_crate
    from fivesafes_tes.devimages import RUNNER_IMAGE
    from fivesafes_tes.workflows import read_workflow

    with open_bag(_new(tmp_path, "tes-task", out="tes.zip")) as bag:
        ran = task_from_crate(bag, read_request(bag, ALICE), None)
    assert ran.language == "tes"
    task = ran.task.model_dump(exclude_none=True, mode="json")
    written = json.loads((EXAMPLES / "tes-task.json").read_text())
    assert [(i["path"], i["content"]) for i in task["inputs"]] == [
        (i["path"], i["content"]) for i in written["inputs"]
    ]
    assert task["executors"] == json.loads(json.dumps(written["executors"]))
    assert task["tags"]["project"] == "diabetes-cancer"

    with open_bag(_new(tmp_path, "cwl-omop", out="cwl.zip")) as bag:
        ran = task_from_crate(bag, read_request(bag, ALICE), RUNNER_IMAGE)
    assert ran.language == "cwl"
    task = ran.task.model_dump(exclude_none=True, mode="json")
    command = task["executors"][0]["command"]
    assert command[1:3] == ["cwl", "/workflow/cwl/omop.cwl"]
    sent = {i["path"]: i["content"] for i in task["inputs"]}
    job = json.loads(sent.pop(command[3]))
    assert job == {"omop": {"class": "Directory", "path": "/data/omop"}}
    expected = read_workflow(WORKFLOWS / "cwl" / "omop.cwl", WORKFLOWS).files
    del expected["cwl/job.yml"]
    assert sent == {f"/workflow/{path}": text for path, text in expected.items()}


def test_a_cwl_job_s_values_and_files_arrive_typed_as_the_job_gave_them(tmp_path):
    """Values keep their CWL type through the crate (FormalParameter additionalType); a file next to
    the job travels in the crate (inputs/) and is given to the run at its place under /inputs."""
    from fivesafes_tes.crates.workflow import task_from_crate
    from fivesafes_tes.devimages import RUNNER_IMAGE

    (tmp_path / "wf").mkdir()
    (tmp_path / "wf" / "main.cwl").write_text(
        "cwlVersion: v1.2\nclass: Workflow\ninputs: []\noutputs: []\nsteps: []\n"
    )
    (tmp_path / "codes.csv").write_text("code\n201826\n")
    (tmp_path / "job.yml").write_text(
        "min_cell: 20\nratio: 0.5\nstrict: true\nlabel: cohort\n"
        "codes: {class: File, path: codes.csv}\nomop: {class: Directory, location: /data/omop}\n"
    )
    source = scaffold.from_cwl(tmp_path / "wf" / "main.cwl", tmp_path / "job.yml")
    crate = scaffold.request_crate(source, project="diabetes-cancer")
    zipped = tmp_path / "request.zip"
    with zipped.open("wb") as handle:
        scaffold.write_zip(crate, handle)
    with open_bag(zipped) as bag:
        assert bag.read("inputs/codes.csv", 100) == b"code\n201826\n"
        ran = task_from_crate(bag, read_request(bag, ALICE), RUNNER_IMAGE)
    sent = {i.path: i.content for i in ran.task.inputs or []}
    job = json.loads(sent[ran.task.executors[0].command[3]])
    assert job == {
        "min_cell": 20,
        "ratio": 0.5,
        "strict": True,
        "label": "cohort",
        "codes": {"class": "File", "path": "/inputs/inputs/codes.csv"},
        "omop": {"class": "Directory", "path": "/data/omop"},
    }
    assert sent["/inputs/inputs/codes.csv"] == "code\n201826\n"
    (tmp_path / "job.yml").write_text("steps: [1, 2]\n")
    with pytest.raises(scaffold.ScaffoldError, match="by hand"):
        scaffold.from_cwl(tmp_path / "wf" / "main.cwl", tmp_path / "job.yml")


def test_the_readme_s_rocrate_example_makes_a_crate_that_runs(tmp_path, monkeypatch):
    """ro-crates/README.md's `rocrate` example, run as written, then `crate zip`: intake accepts it and
    it runs the CWL workflow."""
    from fivesafes_tes.crates.workflow import task_from_crate
    from fivesafes_tes.devimages import RUNNER_IMAGE

    readme = (EXAMPLES / "README.md").read_text()
    example = readme.split("## Make one with `rocrate`", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "omop.cwl").write_bytes((WORKFLOWS / "cwl" / "omop.cwl").read_bytes())
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "ro-crates/README.md", "exec"), {})
    result = CliRunner().invoke(app, ["crate", "zip", "my-crate", "--out", "request.zip"])
    assert result.exit_code == 0, result.output
    with open_bag(tmp_path / "request.zip") as bag:
        assert set(bag.payload) == {"ro-crate-metadata.json", "workflow/omop.cwl"}
        ran = task_from_crate(bag, read_request(bag, ALICE), RUNNER_IMAGE)
    assert ran.language == "cwl"
    assert ran.task.executors[0].command[1:3] == ["cwl", "/workflow/omop.cwl"]


def test_a_bag_folder_zips_again_verified_under_a_fresh_identifier(tmp_path):
    folder = _new(tmp_path, "tes-task", out="tes-task")
    assert (folder / "bagit.txt").is_file()
    assert (folder / "data" / "ro-crate-metadata.json").is_file()
    first = tmp_path / "first.zip"
    result = CliRunner().invoke(app, ["crate", "zip", str(folder), "--out", str(first)])
    assert result.exit_code == 0, result.output
    second = io.BytesIO()
    scaffold.zip_directory(folder, second)
    (tmp_path / "second.zip").write_bytes(second.getvalue())
    with open_bag(first) as one, open_bag(tmp_path / "second.zip") as two:
        assert one.external_identifier != two.external_identifier
        assert {p: f.sha512 for p, f in one.payload.items()} == {p: f.sha512 for p, f in two.payload.items()}
        assert one.metadata() == json.loads((folder / "data" / "ro-crate-metadata.json").read_text())
    with zipfile.ZipFile(first) as archive:
        assert {name.split("/", 1)[0] for name in archive.namelist()} == {"tes-task"}


def test_a_tampered_bag_folder_is_not_zipped(tmp_path):
    folder = _new(tmp_path, "tes-task", out="tes-task")
    script = folder / "data" / "inputs" / "run.sh"
    script.write_text(script.read_text().replace("persons", "people", 1))
    result = CliRunner().invoke(app, ["crate", "zip", str(folder), "--out", str(tmp_path / "x.zip")])
    assert result.exit_code == 2
    assert "not a valid bag" in result.output
    assert not (tmp_path / "x.zip").exists()


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        (["--project", "p"], "one of --tes"),
        (["--project", "p", "--tes", "x.json", "--cwl", "y.cwl"], "one of --tes"),
        (["--project", "p", "--tes", "{missing}"], "not a readable JSON"),
        (["--project", "p", "--tes", "{bad}"], "executors"),
        (["--project", "p", "--tes", "{good}", "--job", "j.yml"], "--job and --root are for --cwl"),
        (["--project", " ", "--tes", "{good}"], "--project"),
        (["--project", "p", "--tes", "{good}", "--orcid", "0000-0001"], "https://orcid.org/"),
        (
            ["--project", "p", "--cwl", str(WORKFLOWS / "cwl" / "omop.cwl"), "--root", "{tmp}"],
            "not under --root",
        ),
    ],
)
def test_what_cannot_make_a_crate_is_refused_with_the_fix(tmp_path, args, fix):
    (tmp_path / "bad.json").write_text('{"name": "no executors"}')
    (tmp_path / "good.json").write_text(
        '{"executors": [{"image": "fivesafes/busybox:1", "command": ["true"]}]}'
    )
    values = {
        "missing": str(tmp_path / "missing.json"),
        "bad": str(tmp_path / "bad.json"),
        "good": str(tmp_path / "good.json"),
        "tmp": str(tmp_path),
    }
    args = [a.format(**values) if a.startswith("{") else a for a in args]
    result = CliRunner().invoke(app, ["crate", "new", *args, "--out", str(tmp_path / "out.zip")])
    assert result.exit_code == 2, result.output
    assert fix in result.output


def test_an_unwritable_destination_is_one_line_not_a_traceback(tmp_path):
    out = tmp_path / "missing" / "request.zip"
    result = CliRunner().invoke(app, ["crate", "new", *EXAMPLE_ARGS["tes-task"], "--out", str(out)])
    assert result.exit_code == 2
    assert "Cannot make this crate" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_crate_is_never_written_over_a_folder_with_something_in_it(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(
        app, ["crate", "new", *EXAMPLE_ARGS["tes-task"], "--out", str(tmp_path / "taken")]
    )
    assert result.exit_code == 2
    assert "not an empty folder" in result.output
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


# --- the checked-in examples -----------------------------------------------------------------------


@pytest.mark.parametrize("example", sorted(EXAMPLE_ARGS))
def test_each_example_is_a_valid_bag_our_intake_accepts(tmp_path, example):
    zipped = io.BytesIO()
    scaffold.zip_directory(EXAMPLES / example, zipped, fresh_identifier=False)
    path = tmp_path / f"{example}.zip"
    path.write_bytes(zipped.getvalue())
    with open_bag(path) as bag:
        read_request(bag, ALICE)
        assert bag.external_identifier == _bag_info(EXAMPLES / example)["External-Identifier"]


@pytest.mark.parametrize("example", sorted(EXAMPLE_ARGS))
def test_each_example_is_what_crate_new_makes_today(tmp_path, example):
    """Regenerate it (ro-crates/README.md says how) when this fails: its sources have changed."""
    fresh = _new(tmp_path, example, out=example)
    kept = EXAMPLES / example
    assert _files(fresh) == _files(kept), f"ro-crates/{example}: run `crate new` again (ro-crates/README.md)"
    for name in sorted(_files(kept)):
        if name.endswith("ro-crate-metadata.json"):
            assert _normalised(fresh / name) == _normalised(kept / name), f"ro-crates/{example}/{name}"
        elif name.startswith("data/"):
            assert (fresh / name).read_bytes() == (kept / name).read_bytes(), f"{name} is out of date"
    assert set(_bag_info(fresh)) == set(_bag_info(kept))


def test_the_tes_example_is_the_demos_analysis():
    from fivesafes_tes import demo

    task = demo.analysis(demo.PREVALENCE, "diabetes-prevalence")
    del task["tags"]
    assert json.loads((EXAMPLES / "tes-task.json").read_text()) == task


def _files(bag: Path) -> set[str]:
    return {p.relative_to(bag).as_posix() for p in bag.rglob("*") if p.is_file()}


def _bag_info(bag: Path) -> dict[str, str]:
    lines = (bag / "bag-info.txt").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def _normalised(metadata_file: Path) -> str:
    """The metadata with what differs on every run (the request's id, the date) replaced."""
    metadata = json.loads(metadata_file.read_text())
    graph = _graph(metadata)
    text = json.dumps(metadata, indent=2, sort_keys=True).replace(graph["./"]["datePublished"], "DATE")
    for action in (e for e in graph.values() if e.get("@type") == "CreateAction"):
        text = text.replace(action["@id"], "#request-ID")
    return text
