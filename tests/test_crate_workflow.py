"""What a request crate runs (issue 11): the workflow in its `mainEntity` becomes one TES task. A TES
task document runs as given; a CWL workflow runs whole inside each TRE by the runner image, the task
`submit-workflow` sends, with a job made from the crate's inputs. Each TRE says which languages it
runs: the gateway refuses a crate's task in the TRE's words, and the TRE refuses it again at lease."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fivesafes_tes.agent import staging
from fivesafes_tes.agent.client import GatewayClient
from fivesafes_tes.agent.loop import Agent
from fivesafes_tes.agent.policy import InvalidPolicy, TrePolicy
from fivesafes_tes.crates.workflow import (
    CWL_LANGUAGE,
    JOB_PATH,
    TES_LANGUAGE,
    WorkflowRefused,
    task_from_crate,
)
from fivesafes_tes.settings import AgentSettings
from fivesafes_tes.tes.admission import shared_runner
from fivesafes_tes.tes.models import TaskRequest
from fivesafes_tes.workflows import read_workflow, workflow_task
from tests.images import docker_client, runner_image  # noqa: F401  (fixtures)
from tests.test_agent_api import AGENT, TES, agent_headers
from tests.test_workflows import _analysis

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
RUNNER = "fivesafes/workflow-runner:1"
PROJECT = "alpha"
TES_DOC: dict[str, Any] = {
    "name": "cohort size",
    "executors": [
        {"image": "fivesafes/busybox:1", "command": ["sh", "-c", "wc -l /in/cohort.csv > /outputs/n.txt"]}
    ],
    "inputs": [{"name": "cohort-definition", "path": "/in/cohort.csv"}],
    "outputs": [{"path": "/outputs/n.txt", "url": "s3://results/n.txt"}],
    "tags": {"tres": "uk-tre"},
}
COHORT = "person_id,age\n1,54\n2,61\n"


# --- crates, as H1's VerifiedBag and H2's RequestCrate present them --------------------------------


@dataclass(frozen=True)
class Payload:
    size: int


class Bag:
    """A verified bag's payload: paths relative to data/."""

    def __init__(self, files: dict[str, str | bytes]) -> None:
        self.files = {p: d.encode() if isinstance(d, str) else d for p, d in files.items()}
        self.payload = {p: Payload(len(d)) for p, d in self.files.items()}

    def read(self, path: str, max_bytes: int) -> bytes:
        assert self.payload[path].size <= max_bytes, "read past the cap"
        return self.files[path]


@dataclass(frozen=True)
class Request:
    metadata: dict[str, Any]
    project: str = PROJECT
    main_entity: str = "workflow/"
    create_action: str = "#run"


@dataclass
class Crate:
    """A request crate: the workflow folder, the inputs and the entities that describe them."""

    files: dict[str, str | bytes] = field(default_factory=dict)
    entities: list[dict[str, Any]] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    main_entity: str = "workflow/"

    def file(self, path: str, text: str | bytes, parameter: str | None = None, **about: Any) -> Crate:
        self.files[path] = text
        return self.entity(path, "File", parameter, **about)

    def value(self, entity_id: str, value: Any, parameter: str, typed: str | None = None) -> Crate:
        return self.entity(entity_id, "PropertyValue", parameter, typed=typed, value=value)

    def entity(
        self, entity_id: str, kind: str, parameter: str | None, *, many: bool = False, **about: Any
    ) -> Crate:
        entity = {"@id": entity_id, "@type": kind, **{k: v for k, v in about.items() if k != "typed"}}
        if parameter is not None:
            formal: dict[str, Any] = {
                "@id": f"#param-{parameter}",
                "@type": "FormalParameter",
                "name": parameter,
            }
            if about.get("typed"):
                formal["additionalType"] = about["typed"]
            if many:
                formal["multipleValues"] = True
            entity["exampleOfWork"] = {"@id": formal["@id"]}
            if formal not in self.entities:
                self.entities.append(formal)
        self.entities.append(entity)
        self.inputs.append(entity_id)
        return self

    def workflow(self, main: str, language: str | None, files: dict[str, str | bytes]) -> Crate:
        """The Workflow RO-Crate in workflow/: its files, and its own metadata naming `main`."""
        self.files.update({f"workflow/{path}": text for path, text in files.items()})
        if language is not None:
            self.files["workflow/ro-crate-metadata.json"] = json.dumps(workflow_crate(main, language))
        return self

    def build(self) -> tuple[Bag, Request]:
        graph = [
            {"@id": "ro-crate-metadata.json", "@type": "CreativeWork", "about": {"@id": "./"}},
            {"@id": "./", "@type": "Dataset", "mainEntity": {"@id": self.main_entity}},
            {"@id": self.main_entity, "@type": "Dataset"},
            {
                "@id": "#run",
                "@type": "CreateAction",
                "name": "cohort size for the diabetes study",
                "instrument": {"@id": self.main_entity},
                "object": [{"@id": i} for i in self.inputs],
            },
            *self.entities,
        ]
        return Bag(self.files), Request(metadata={"@graph": graph}, main_entity=self.main_entity)

    def task(self, runner: str | None = RUNNER):
        bag, request = self.build()
        return task_from_crate(bag, request, runner)


def workflow_crate(main: str, language: str) -> dict[str, Any]:
    return {
        "@graph": [
            {"@id": "ro-crate-metadata.json", "@type": "CreativeWork", "about": {"@id": "./"}},
            {"@id": "./", "@type": "Dataset", "mainEntity": {"@id": main}},
            {
                "@id": main,
                "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow"],
                "programmingLanguage": {"@id": language},
            },
            {"@id": language, "@type": "ComputerLanguage"},
        ]
    }


def tes_crate(doc: dict[str, Any] = TES_DOC) -> Crate:
    return Crate().workflow("task.json", TES_LANGUAGE, {"task.json": json.dumps(doc)})


def cwl_crate() -> Crate:
    """The CWL example of workflows/, sent whole as submit-workflow sends it (--root workflows)."""
    files = read_workflow(WORKFLOWS / "cwl" / "omop.cwl", WORKFLOWS).files
    return Crate().workflow("cwl/omop.cwl", CWL_LANGUAGE, dict(files))


def inputs_of(task: TaskRequest) -> dict[str, str]:
    return {i.path: i.content or "" for i in task.inputs or []}


def zipped(crate: Crate, tmp_path: Path) -> tuple[Path, Request]:
    """The crate as a real BagIt zip (`crates.bagit.write_bag`), with its request."""
    import io

    from fivesafes_tes.crates.bagit import BagEntry, write_bag

    fake, request = crate.build()
    files = {**fake.files, "ro-crate-metadata.json": json.dumps(request.metadata).encode()}
    path = tmp_path / "crate.zip"
    with path.open("wb") as out:
        write_bag(out, "crate", [BagEntry(p, lambda d=d: io.BytesIO(d)) for p, d in files.items()], {})
    return path, request


def test_a_verified_bag_gives_the_same_tasks_as_its_payload(tmp_path):
    from fivesafes_tes.crates.bagit import open_bag

    for crate in (
        tes_crate().file("cohort.csv", COHORT, parameter="cohort-definition"),
        cwl_crate().value("#omop", "/data/omop", "omop", typed="Dataset"),
    ):
        path, request = zipped(crate, tmp_path)
        with open_bag(path) as bag:
            assert task_from_crate(bag, request, RUNNER) == crate.task()


# --- a TES task document ---------------------------------------------------------------------------


def test_a_tes_task_crate_is_the_same_task_as_posted_with_the_crates_project():
    ran = tes_crate({**TES_DOC, "inputs": []}).task(runner=None)
    assert ran.language == "tes"
    assert ran.task == TaskRequest.model_validate(
        {**TES_DOC, "inputs": [], "tags": {"tres": "uk-tre", "project": PROJECT}}
    )


def test_the_crates_files_fill_the_tasks_named_inputs_and_the_rest_go_under_inputs():
    crate = tes_crate().file("cohort.csv", COHORT, parameter="cohort-definition").file("notes.txt", "hi\n")
    task = crate.task().task
    assert [i.model_dump(exclude_none=True) for i in task.inputs or []] == [
        {"name": "cohort-definition", "path": "/in/cohort.csv", "type": "FILE", "content": COHORT},
        {"name": "notes.txt", "path": "/inputs/notes.txt", "type": "FILE", "content": "hi\n"},
    ]
    assert task.executors == TaskRequest.model_validate(TES_DOC | {"inputs": []}).executors


def test_a_tes_task_is_found_by_its_file_name_without_a_workflow_crate():
    crate = Crate().workflow("count.tes.json", None, {"count.tes.json": json.dumps(TES_DOC), "README": "x"})
    assert crate.file("cohort.csv", COHORT, parameter="cohort-definition").task().language == "tes"


# --- a CWL workflow --------------------------------------------------------------------------------


def test_a_cwl_crate_is_the_runner_task_submit_workflow_sends_with_a_job_from_its_inputs():
    crate = (
        cwl_crate()
        .value("#omop", "/data/omop", "omop", typed="Dataset")
        .value("#min-cell", "20", "min_cell", typed="Integer")
    )
    ran = crate.task()
    assert ran.language == "cwl"
    sent = workflow_task(read_workflow(WORKFLOWS / "cwl" / "omop.cwl", WORKFLOWS), project=PROJECT)
    (executor,) = ran.task.executors
    assert executor.image == RUNNER
    assert executor.command == [*sent["executors"][0]["command"], JOB_PATH]
    given = inputs_of(ran.task)
    assert {p: t for p, t in given.items() if p.startswith("/workflow/")} == {
        i["path"]: i["content"] for i in sent["inputs"]
    }
    assert json.loads(given[JOB_PATH]) == {
        "omop": {"class": "Directory", "path": "/data/omop"},
        "min_cell": 20,
    }
    assert set(given) == {*(i["path"] for i in sent["inputs"]), JOB_PATH}  # no crate metadata sent
    assert [o.path for o in ran.task.outputs or []] == ["/outputs"]
    assert (ran.task.tags or {})["project"] == PROJECT
    assert ran.task.name == "cohort size for the diabetes study"


def test_cwl_files_folders_and_arrays_come_from_the_payload():
    crate = (
        Crate()
        .workflow("count.cwl", None, {"count.cwl": "cwlVersion: v1.2\nclass: CommandLineTool\n"})
        .file("tables/people.csv", COHORT, parameter="people")
        .file("tables/sites.csv", "site\nA\n")
        .entity("tables/", "Dataset", "tables")
        .entity("#flag-1", "PropertyValue", "flags", many=True, value="a")
        .entity("#flag-2", "PropertyValue", "flags", many=True, value="b")
        .value("#fast", "True", "fast", typed="Boolean")
    )
    crate.inputs.remove("tables/sites.csv")  # described, but only as a part of tables/
    task = crate.task().task
    given = inputs_of(task)
    assert json.loads(given[JOB_PATH]) == {
        "people": {"class": "File", "path": "/inputs/tables/people.csv"},
        "tables": {"class": "Directory", "path": "/inputs/tables"},
        "flags": ["a", "b"],
        "fast": True,
    }
    assert given["/inputs/tables/people.csv"] == COHORT
    assert given["/inputs/tables/sites.csv"] == "site\nA\n"
    assert given["/workflow/count.cwl"].startswith("cwlVersion")


# --- refused, with what to change ------------------------------------------------------------------


def _many_inputs() -> Crate:
    crate = tes_crate({**TES_DOC, "inputs": []})
    for n in range(101):
        crate.file(f"part-{n}.csv", "x\n")
    return crate


def _outside_the_folder() -> Crate:
    crate = Crate().workflow("x", None, {"x": "y"})
    crate.files["workflow/ro-crate-metadata.json"] = json.dumps(
        workflow_crate("../../etc/passwd", CWL_LANGUAGE)
    )
    return crate


REFUSED = [
    pytest.param(
        lambda: Crate(main_entity="https://workflowhub.eu/workflows/289?version=1"),
        "is a URL: this gateway never fetches a workflow",
        id="url-main-entity",
    ),
    pytest.param(
        lambda: Crate().workflow(
            "main.nf", "https://w3id.org/workflowhub/workflow-ro-crate#nextflow", {"main.nf": "x"}
        ),
        "the workflow data/workflow/main.nf is in Nextflow; this gateway runs a TES task document "
        f"(programmingLanguage {TES_LANGUAGE}, or a file named *.tes.json) or a CWL workflow",
        id="other-language",
    ),
    pytest.param(
        lambda: Crate().workflow("task.json", TES_LANGUAGE, {"other.json": "{}"}),
        "the workflow file data/workflow/task.json is not in the crate's payload",
        id="missing-workflow-file",
    ),
    pytest.param(
        lambda: Crate(main_entity="elsewhere/").workflow("a.cwl", CWL_LANGUAGE, {"a.cwl": "x"}),
        "names a folder with no files in the crate's payload",
        id="missing-folder",
    ),
    pytest.param(
        lambda: Crate().workflow("a.py", None, {"a.py": "x", "b.py": "y"}),
        "cannot tell which file in workflow/ is the workflow: add workflow/ro-crate-metadata.json",
        id="no-main-workflow",
    ),
    pytest.param(_outside_the_folder, "must be a file inside the workflow's folder", id="escape"),
    pytest.param(
        lambda: tes_crate().file("cohort.csv", b"\xff\xfe\x00x", parameter="cohort-definition"),
        "data/cohort.csv is not UTF-8 text; a file travels to a TRE as TES content",
        id="non-utf8-input",
    ),
    pytest.param(
        lambda: tes_crate().file("cohort.csv", "", parameter="cohort-definition"),
        "data/cohort.csv is empty; TES content cannot be empty",
        id="empty-input",
    ),
    pytest.param(
        lambda: tes_crate().file("cohort.csv", "x" * (1 << 20 | 1), parameter="cohort-definition"),
        "data/cohort.csv: 1048577 bytes; a file travels to a TRE as TES content, at most 1048576 bytes",
        id="large-input",
    ),
    pytest.param(
        _many_inputs,
        "101 files to send (the task's inputs and the crate's); a task carries at most 100 inputs",
        id="too-many-inputs",
    ),
    pytest.param(
        lambda: tes_crate().entity("https://example.org/cohort.csv", "File", "cohort-definition"),
        "input https://example.org/cohort.csv is a URL: this gateway fetches no input",
        id="url-input",
    ),
    pytest.param(
        lambda: tes_crate().entity("cohort.csv", "File", "cohort-definition"),
        "input cohort.csv is not a file in the crate's payload",
        id="input-not-in-payload",
    ),
    pytest.param(
        lambda: tes_crate(),
        "inputs.0 ('cohort-definition') has no url or content and no input of the crate fills it: add a File "
        "to the CreateAction's object whose exampleOfWork is a FormalParameter named 'cohort-definition'",
        id="tes-input-unfilled",
    ),
    pytest.param(
        lambda: tes_crate().file("cohort.csv", COHORT, "cohort-definition").value("#n", "3", "n"),
        "input #n is a value; a TES task takes files only",
        id="tes-value",
    ),
    pytest.param(
        lambda: tes_crate({**TES_DOC, "inputs": [], "tags": {"Project": "beta"}}),
        "its tag project names beta, but the crate is for project alpha",
        id="tes-other-project",
    ),
    pytest.param(
        lambda: tes_crate({"executors": []}),
        "data/workflow/task.json is not a valid TES task: executors: List should have at least 1 item",
        id="tes-invalid",
    ),
    pytest.param(
        lambda: Crate().workflow("task.json", TES_LANGUAGE, {"task.json": "{not json"}),
        "data/workflow/task.json is not JSON",
        id="tes-not-json",
    ),
    pytest.param(
        lambda: cwl_crate().file("cohort.csv", COHORT),
        "input cohort.csv does not say which CWL input it is: give it exampleOfWork",
        id="cwl-input-unnamed",
    ),
    pytest.param(
        lambda: cwl_crate().value("#a", "1", "min_cell").value("#b", "2", "min_cell"),
        "two inputs are given for the CWL input 'min_cell'; give one, or mark its FormalParameter "
        "multipleValues",
        id="cwl-input-twice",
    ),
    pytest.param(
        lambda: cwl_crate().value("#m", "ten", "min_cell", typed="Integer"),
        "input #m: 'ten' is not a valid Integer, the additionalType of its FormalParameter",
        id="cwl-input-type",
    ),
]


@pytest.mark.parametrize(("crate", "reason"), REFUSED)
def test_a_crate_that_cannot_run_is_refused_saying_what_to_change(crate, reason):
    with pytest.raises(WorkflowRefused) as refused:
        crate().task()
    assert reason in str(refused.value)


def test_a_cwl_crate_without_a_runner_image_is_refused():
    with pytest.raises(WorkflowRefused, match="no runner image for CWL workflows"):
        cwl_crate().task(runner=None)


# --- each TRE's languages ------------------------------------------------------------------------------


def test_a_tre_policy_names_known_languages_each_with_a_runner_and_always_runs_tes(tmp_path):
    assert TrePolicy().workflow_languages == ["tes", "cwl", "snakemake"]
    assert TrePolicy(workflow_languages=["cwl"]).workflow_languages == ["tes", "cwl"]
    assert TrePolicy(workflow_runners={"cwl": "tre.example/r:2"}).workflow_languages == ["tes", "cwl"]
    assert TrePolicy(workflow_runners={}).workflow_languages == ["tes"]
    path = tmp_path / "policy.yaml"
    path.write_text("workflow_languages: [tes, nextflow]\n")
    with pytest.raises(InvalidPolicy, match="'nextflow' unknown; a TRE here can run tes, cwl, snakemake"):
        TrePolicy.load(path)
    path.write_text("workflow_runners: {nextflow: x}\n")
    with pytest.raises(InvalidPolicy, match="workflow_runners: 'nextflow' unknown"):
        TrePolicy.load(path)
    path.write_text("workflow_languages: [tes, cwl]\nworkflow_runners: {snakemake: x}\n")
    with pytest.raises(InvalidPolicy, match="CWL needs a runner image: name it in workflow_runners"):
        TrePolicy.load(path)
    published = staging.admission(TrePolicy(workflow_languages=["tes", "cwl"]), "uk-tre")
    assert (published.workflow_languages, published.workflow_runners) == (["tes", "cwl"], {"cwl": RUNNER})


def test_the_language_refusal_is_one_sentence_for_gateway_and_tre():
    tes_only = staging.admission(
        TrePolicy(allowed_images=["fivesafes/*"], workflow_languages=["tes"]), "uk-tre"
    )
    assert tes_only.language_refusal("tes") is None
    why = "uk-tre does not run CWL workflows; it runs TES (its TRE admin sets workflow_languages)"
    assert tes_only.language_refusal("cwl") == why
    task = cwl_crate().task().task.model_dump(mode="json", exclude_none=True, exclude={"tags"})
    assert tes_only.refusal(task, PROJECT) == f"executors.0.command: {why}"
    assert (
        staging.admission(TrePolicy(allowed_images=["fivesafes/*"]), "uk-tre").refusal(task, PROJECT) is None
    )
    # whoever calls the runner: a path to it, and Snakemake too
    snakemake = {
        "executors": [{"image": RUNNER, "command": ["/usr/local/bin/fivesafes-workflow", "snakemake"]}]
    }
    assert tes_only.refusal(snakemake, PROJECT) == (
        "executors.0.command: uk-tre does not run Snakemake workflows; it runs TES (its TRE admin sets "
        "workflow_languages)"
    )


def test_the_gateway_picks_the_runner_image_every_target_tre_offers():
    one = staging.admission(TrePolicy(), "uk-tre")
    other = staging.admission(TrePolicy(workflow_runners={"cwl": "tre.example/runner-r:2"}), "sg-tre")
    tes_only = staging.admission(TrePolicy(workflow_languages=["tes"]), "sg-tre")
    assert shared_runner([one, tes_only], "cwl", "default") == RUNNER
    assert shared_runner([tes_only], "cwl", "default") == "default"
    with pytest.raises(
        ValueError,
        match=r"sg-tre runs it with tre\.example/runner-r:2; uk-tre runs it with fivesafes/workflow-runner:1",
    ):
        shared_runner([one, other], "cwl", "default")


def test_a_tre_that_runs_no_cwl_is_refused_at_the_gateway_in_its_words_and_again_at_lease(gateway, tmp_path):
    """The agent publishes its real policy; the gateway refuses the crate's task with the TRE's
    sentence and stores nothing; staging at the TRE (what a lease runs) says the same about it."""
    from fivesafes_tes.devstack import free_port, serve

    policy = TrePolicy(allowed_images=["fivesafes/*"], workflow_languages=["tes", "snakemake"])
    token = gateway.token("agent-uk-tre", "tre-agent", tre="uk-tre")
    port = free_port()
    server, thread = serve(gateway.app, "127.0.0.1", port)
    agent = Agent(
        AgentSettings(tre="uk-tre", data_dir=tmp_path / "agent"),
        client=GatewayClient(f"http://127.0.0.1:{port}", lambda: token),
        executor=None,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        policy=policy,
    )
    try:
        agent.sync()
        task = cwl_crate().value("#omop", "/data/omop", "omop", typed="Dataset").task().task
        body = task.model_dump(mode="json", exclude_none=True)
        answer = gateway.client.post(
            f"{TES}/tasks",
            json={**body, "tags": {**body["tags"], "tres": "uk-tre"}},
            headers=gateway.headers(),
        )
        assert answer.status_code == 400, answer.text
        words = (
            "executors.0.command: uk-tre does not run CWL workflows; it runs TES and Snakemake (its TRE "
            "admin sets workflow_languages)"
        )
        assert answer.json()["detail"] == words
        with pytest.raises(staging.StagingRefused) as at_the_tre:
            staging.prepare(
                {k: v for k, v in body.items() if k != "tags"},
                child_id="c1",
                attempt=1,
                tre="uk-tre",
                project=PROJECT,
                policy=policy,
                run_as="65534:65534",
            )
        assert str(at_the_tre.value) == words
        tes_task = tes_crate().file("cohort.csv", COHORT, "cohort-definition").task().task
        accepted = gateway.client.post(
            f"{TES}/tasks",
            json=tes_task.model_dump(mode="json", exclude_none=True),
            headers=gateway.headers(),
        )
        assert accepted.status_code == 200, accepted.text
    finally:
        agent.client.close()
        server.should_exit = True
        thread.join(10)


def test_an_agent_that_publishes_no_languages_is_not_refused_for(gateway):
    """A document from an agent that predates languages: the gateway refuses nothing on its behalf."""
    from fivesafes_tes.tes.admission import Admission

    document = staging.admission(TrePolicy(allowed_images=["*"]), "uk-tre").model_dump(mode="json")
    del document["workflow_languages"], document["workflow_runners"]
    assert Admission.model_validate(document).language_refusal("cwl") is None
    assert gateway.client.put(
        f"{AGENT}/policy", json=document, headers=agent_headers(gateway, "uk-tre")
    ).json() == {"changed": True}


# --- end to end: a CWL crate's task runs in the runner image inside a TRE ---------------------------------

COPY_TOOL = """cwlVersion: v1.2
class: CommandLineTool
baseCommand: [python3, -c, "import shutil, sys; shutil.copyfile(sys.argv[1], 'copy.csv')"]
inputs:
  table: {type: File, inputBinding: {position: 1}}
outputs:
  copy: {type: File, outputBinding: {glob: copy.csv}}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_client, runner_image):  # noqa: F811
    from fivesafes_tes import devstack
    from tests import images

    images.ensure_busybox_image(docker_client)
    with devstack.start(
        tmp_path_factory.mktemp("crates") / "stack", agents=True, executor="docker", report_granularity_s=0
    ) as running:
        yield running


def _run_and_release(stack, task: TaskRequest) -> dict[str, bytes]:
    """Submit to uk-tre, approve every held output, and return the released outputs by name."""
    import time

    import httpx

    alice = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.token('alice')}"})
    body = task.model_dump(mode="json", exclude_none=True)
    body["tags"] = {**body["tags"], "project": "diabetes-cancer", "tres": "uk-tre"}
    answer = alice.post(f"{TES}/tasks", json=body)
    assert answer.status_code == 200, answer.text
    task_id = answer.json()["id"]

    def stage() -> str:
        (log,) = alice.get(f"{TES}/tasks/{task_id}", params={"view": "FULL"}).json()["logs"]
        assert log["metadata"]["stage"] not in {"system_failed", "rejected_by_tre", "executor_failed"}, log
        return str(log["metadata"]["stage"])

    deadline = time.monotonic() + 180
    while stage() != "awaiting_review":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    token = stack.tre_token("uk-tre-checker", "output-checker", "uk-tre")
    checker = httpx.Client(base_url=stack.tre_url("uk-tre"), headers={"Authorization": f"Bearer {token}"})
    (child,) = [c for c in checker.get("/review/v1/children").json() if c["task_id"] == task_id]
    shown = checker.get(f"/review/v1/children/{child['child_id']}").json()
    assert shown["outcome"] == "succeeded", shown
    for file in shown["files"]:
        decision = {"name": file["name"], "decision": "approved", "reason": "aggregates"}
        assert checker.post(f"/review/v1/children/{child['child_id']}/decisions", json=decision).is_success
    while stage() != "released":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    (tre,) = alice.get(f"/api/v1/tasks/{task_id}/results").json()["tres"]
    return {
        f["name"]: alice.get(f"/api/v1/results/{f['id']}").content
        for f in tre["files"]
        if f["kind"] == "output"
    }


def test_a_cwl_crate_runs_in_the_runner_with_its_job_and_its_input_files(stack, tmp_path):
    omop = (
        cwl_crate()
        .value("#omop", "/data/omop", "omop", typed="Dataset")
        .value("#min-cell", 20, "min_cell", typed="Integer")
    )
    released = _run_and_release(stack, omop.task().task)
    steps, dataset = _analysis(), stack.agents["uk-tre"].policy.datasets["omop"].path
    steps.cohort(dataset, tmp_path / "cohort.csv")
    steps.counts(tmp_path / "cohort.csv", tmp_path / "counts.csv", 20)  # the job's min_cell, not 10
    assert released["/outputs/cohort_counts.csv"] == (tmp_path / "counts.csv").read_bytes()

    copy = (
        Crate()
        .workflow("copy.cwl", CWL_LANGUAGE, {"copy.cwl": COPY_TOOL})
        .file("tables/people.csv", COHORT, parameter="table")
    )
    assert _run_and_release(stack, copy.task().task)["/outputs/copy.csv"] == COHORT.encode()
