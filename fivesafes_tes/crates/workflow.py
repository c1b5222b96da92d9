"""What a request crate runs: the workflow in its `mainEntity`, turned into one TES task.

The `mainEntity` is a Workflow RO-Crate: a folder in the bag's payload (`workflow/`), whose own
`ro-crate-metadata.json` names the workflow file as its `mainEntity`, with a `programmingLanguage`.
The workflow is one of:

- a **TES task document** (`programmingLanguage` `https://ga4gh.github.io/task-execution-schemas/`,
  or a file named `*.tes.json`): run as given, as if it had been POSTed to the TES API;
- a **CWL workflow** (`https://w3id.org/workflowhub/workflow-ro-crate#cwl`, or a `*.cwl` file): run
  whole inside each TRE by the runner image, the task `fivesafes-tes submit-workflow` sends
  (`workflows.workflow_task`), with a job document made from the crate's inputs.

The CreateAction's `object` (the inputs) come in as literal `content` inputs, the one kind every TRE
stages: a payload file at `/inputs/<its path in the crate>` (or, for a TES task, at the path of the
task's input whose `name` is the file's FormalParameter), a payload folder as its files. A URL is never
fetched, neither as `mainEntity` nor as an input: what a TRE signed off must be what runs.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from pydantic import ValidationError

from fivesafes_tes.tes.caps import DEFAULT_CAPS
from fivesafes_tes.tes.models import TaskRequest
from fivesafes_tes.workflows import Workflow, WorkflowError, travels, workflow_task

TES_LANGUAGE = "https://ga4gh.github.io/task-execution-schemas/"
CWL_LANGUAGE = "https://w3id.org/workflowhub/workflow-ro-crate#cwl"
CRATE_LANGUAGES = ("tes", "cwl")
INPUTS_DIR = "/inputs"
JOB_PATH = "/job/job.json"  # a folder of its own: no input of the crate can be there
MAX_CONTENT_BYTES = 1 << 20  # the gateway's default for one literal input (FIVESAFES_MAX_CONTENT_BYTES)
MAX_METADATA_BYTES = 4 << 20
_METADATA = "ro-crate-metadata.json"
_NOT_SENT = (_METADATA, "ro-crate-preview.html")  # the workflow crate's description, not the workflow
# Languages a Workflow RO-Crate may name that are not run here, by the words of the refusal.
_OTHER_LANGUAGES = {
    "https://w3id.org/workflowhub/workflow-ro-crate#nextflow": "Nextflow",
    "https://w3id.org/workflowhub/workflow-ro-crate#snakemake": "Snakemake",
    "https://w3id.org/workflowhub/workflow-ro-crate#galaxy": "Galaxy",
}
_ACCEPTED = (
    "this gateway runs a TES task document (programmingLanguage "
    f"{TES_LANGUAGE}, or a file named *.tes.json) or a CWL workflow (programmingLanguage {CWL_LANGUAGE}, "
    "or a file named *.cwl)"
)


class WorkflowRefused(ValueError):
    """The crate's workflow or inputs cannot run; the message says what is wrong and what to change."""


class _Sized(Protocol):
    @property
    def size(self) -> int: ...


class Bag(Protocol):
    """What this module reads of a verified bag (`crates.bagit.VerifiedBag`)."""

    @property
    def payload(self) -> Mapping[str, _Sized]: ...

    def read(self, path: str, max_bytes: int) -> bytes: ...


class Request(Protocol):
    """What this module reads of an accepted request (`crates.profile.RequestCrate`)."""

    @property
    def metadata(self) -> dict[str, Any]: ...

    @property
    def project(self) -> str: ...

    @property
    def main_entity(self) -> str: ...

    @property
    def create_action(self) -> str: ...


@dataclass(frozen=True)
class CrateWorkflow:
    language: str  # one of CRATE_LANGUAGES
    task: TaskRequest


@dataclass(frozen=True)
class _Input:
    """One entity of the CreateAction's `object`."""

    id: str
    parameter: str | None  # the name of its FormalParameter (exampleOfWork)
    many: bool  # the FormalParameter takes multipleValues
    files: tuple[str, ...]  # payload paths: one for a File, every file of a Dataset folder
    folder: str | None  # a Dataset's payload folder
    value: Any  # a PropertyValue's value


def task_from_crate(
    bag: Bag, request: Request, runner_image: str | None, *, max_content_bytes: int = MAX_CONTENT_BYTES
) -> CrateWorkflow:
    """The TES task that runs the request's workflow on its inputs; WorkflowRefused says what to change.

    `runner_image` runs a CWL workflow (the image the target TREs offer, `tes.admission.shared_runner`);
    None refuses CWL. Each file that travels as content is at most `max_content_bytes`.
    """
    graph = _graph(request.metadata)
    folder = _workflow_folder(request.main_entity, bag)
    main, language = _main_workflow(bag, graph, request.main_entity, folder)
    if main not in bag.payload:
        raise WorkflowRefused(
            f"the workflow file data/{main} is not in the crate's payload: add it to the bag, or make the "
            "Workflow RO-Crate's mainEntity name the file that is there"
        )
    action = graph.get(request.create_action, {})
    inputs = [_input(graph, bag, entity_id) for entity_id in _ids(action.get("object"))]
    reader = _Reader(bag, max_content_bytes)
    name = action.get("name") if isinstance(action.get("name"), str) else None
    if language == "tes":
        task = _tes_task(reader, main, inputs, request.project, name)
    else:
        task = _cwl_task(reader, folder, main, inputs, request.project, name, runner_image)
    return CrateWorkflow(language=language, task=task)


# --- the crate's metadata ---------------------------------------------------------------------------


def _graph(metadata: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    graph = metadata.get("@graph")
    if not isinstance(graph, list):
        raise WorkflowRefused(f"{_METADATA}: @graph must be a list of entities")
    return {e["@id"]: e for e in graph if isinstance(e, dict) and isinstance(e.get("@id"), str)}


def _ids(value: Any) -> list[str]:
    """The @ids a JSON-LD property refers to (one reference, a list of them, or plain strings)."""
    values = value if isinstance(value, list) else [] if value is None else [value]
    found = []
    for item in values:
        if isinstance(item, dict) and isinstance(item.get("@id"), str):
            found.append(item["@id"])
        elif isinstance(item, str):
            found.append(item)
    return found


def _types(entity: Mapping[str, Any]) -> set[str]:
    kind = entity.get("@type")
    return {kind} if isinstance(kind, str) else {k for k in kind or [] if isinstance(k, str)}


def _is_url(entity_id: str) -> bool:
    return bool(urlsplit(entity_id).scheme) or entity_id.startswith("//")


def _payload_path(entity_id: str) -> str | None:
    """An entity's @id as a path relative to the payload (`data/`); None if it cannot be one."""
    if _is_url(entity_id) or entity_id.startswith(("#", "_:")):
        return None
    path = unquote(entity_id)
    normal = posixpath.normpath(path)
    if path.startswith("/") or normal == ".." or normal.startswith("../"):
        return None
    return "" if normal == "." else normal


def _under(bag: Bag, folder: str) -> list[str]:
    return sorted(path for path in bag.payload if path.startswith(folder + "/"))


# --- the workflow -----------------------------------------------------------------------------------


def _workflow_folder(main_entity: str, bag: Bag) -> str:
    if _is_url(main_entity):
        raise WorkflowRefused(
            f"mainEntity {main_entity} is a URL: this gateway never fetches a workflow (what a TRE signs "
            "off must be what runs, and a TRE reaches no network); put the Workflow RO-Crate in the "
            "crate as a folder, such as workflow/, and make that folder's @id the mainEntity"
        )
    folder = _payload_path(main_entity)
    if not folder:
        raise WorkflowRefused(
            f"mainEntity {main_entity!r} must be a folder inside the crate, such as workflow/, holding "
            "the Workflow RO-Crate"
        )
    if not _under(bag, folder):
        raise WorkflowRefused(
            f"mainEntity {main_entity} names a folder with no files in the crate's payload; put the "
            f"workflow under data/{folder}/ in the bag"
        )
    return folder


def _main_workflow(
    bag: Bag, graph: Mapping[str, dict[str, Any]], main_entity: str, folder: str
) -> tuple[str, str]:
    """The workflow file's payload path and its language, from the Workflow RO-Crate's own metadata,
    else from how the request crate describes the folder, else from the one file named for a language."""
    nested = f"{folder}/{_METADATA}"
    if nested in bag.payload:
        if bag.payload[nested].size > MAX_METADATA_BYTES:
            raise WorkflowRefused(
                f"data/{nested}: over {MAX_METADATA_BYTES} bytes; a Workflow RO-Crate's metadata need only "
                "describe the workflow: make it smaller"
            )
        inner = _graph(_parse_json(bag.read(nested, MAX_METADATA_BYTES), f"data/{nested}"))
        root = _ids(inner.get(_METADATA, {}).get("about")) or ["./"]
        main = _ids(inner.get(root[0], {}).get("mainEntity"))
        if not main:
            raise WorkflowRefused(
                f"data/{nested}: its root dataset names no mainEntity; make it the workflow file, "
                f"with a programmingLanguage ({_ACCEPTED})"
            )
        path = _inside(folder, main[0], f"data/{nested}: mainEntity")
        return path, _language(inner, inner.get(main[0], {}), path)
    main = _ids(graph.get(main_entity, {}).get("mainEntity"))
    if main:
        path = _inside("", main[0], f"mainEntity {main_entity}: its mainEntity")
        if not path.startswith(folder + "/"):
            raise WorkflowRefused(f"the workflow file {main[0]} must be inside the folder {folder}/")
        return path, _language(graph, graph.get(main[0], {}), path)
    for suffix, language in ((".tes.json", "tes"), (".cwl", "cwl")):
        named = [p for p in _under(bag, folder) if p.endswith(suffix)]
        if len(named) == 1:
            return named[0], language
    raise WorkflowRefused(
        f"cannot tell which file in {folder}/ is the workflow: add {folder}/{_METADATA} (a Workflow "
        f"RO-Crate) whose mainEntity is the workflow file, with its programmingLanguage; {_ACCEPTED}"
    )


def _inside(folder: str, entity_id: str, where: str) -> str:
    relative = _payload_path(entity_id)
    path = posixpath.normpath(posixpath.join(folder, relative)) if relative else None
    if path is None or (folder and not path.startswith(folder + "/")):
        raise WorkflowRefused(
            f"{where} {entity_id!r} must be a file inside the workflow's folder (a relative path, not a URL)"
        )
    return path


def _language(graph: Mapping[str, dict[str, Any]], entity: Mapping[str, Any], path: str) -> str:
    said = _ids(entity.get("programmingLanguage"))
    if not said:
        if path.endswith(".tes.json"):
            return "tes"
        if path.endswith(".cwl"):
            return "cwl"
        raise WorkflowRefused(f"the workflow file {path} names no programmingLanguage; {_ACCEPTED}")
    described = graph.get(said[0], {})
    names = [said[0], *_ids(described.get("identifier")), *_ids(described.get("url"))]
    for name in names:
        if name.rstrip("/") == TES_LANGUAGE.rstrip("/") or name.startswith(
            "https://github.com/ga4gh/task-execution-schemas"
        ):
            return "tes"
        if name == CWL_LANGUAGE or name.startswith(("https://w3id.org/cwl", "https://www.commonwl.org")):
            return "cwl"
    label = _OTHER_LANGUAGES.get(said[0]) or str(described.get("name") or said[0])
    raise WorkflowRefused(f"the workflow data/{path} is in {label}; {_ACCEPTED}")


def _parse_json(data: bytes, where: str) -> dict[str, Any]:
    try:
        parsed = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WorkflowRefused(f"{where} is not JSON ({exc}); fix it") from None
    if not isinstance(parsed, dict):
        raise WorkflowRefused(f"{where} must be a JSON object")
    return parsed


# --- the inputs -------------------------------------------------------------------------------------


def _input(graph: Mapping[str, dict[str, Any]], bag: Bag, entity_id: str) -> _Input:
    entity = graph.get(entity_id)
    if entity is None:
        raise WorkflowRefused(
            f"the CreateAction's object lists {entity_id} but the metadata does not describe it; add an "
            "entity with that @id: a File or Dataset in the crate, or a PropertyValue"
        )
    parameter = graph.get(next(iter(_ids(entity.get("exampleOfWork"))), ""), {})
    name = parameter.get("name") if isinstance(parameter.get("name"), str) else None
    many = parameter.get("multipleValues") is True
    types = _types(entity)
    if "PropertyValue" in types:
        if "value" not in entity:
            raise WorkflowRefused(f"input {entity_id}: a PropertyValue needs a value")
        if not isinstance(entity["value"], str | int | float | bool):
            raise WorkflowRefused(
                f"input {entity_id}: a PropertyValue's value is text, a number or true/false"
            )
        value = _typed(entity["value"], parameter, entity_id)
        return _Input(entity_id, name, many, (), None, value)
    if not types & {"File", "Dataset"}:
        raise WorkflowRefused(
            f"input {entity_id} is a {', '.join(sorted(types)) or 'thing with no @type'}; an input is a File "
            "or a Dataset (folder) in the crate, or a PropertyValue"
        )
    if _is_url(entity_id):
        raise WorkflowRefused(
            f"input {entity_id} is a URL: this gateway fetches no input (a TRE reaches no network); put the "
            "file in the crate's payload and give its path as the @id"
        )
    path = _payload_path(entity_id)
    if "Dataset" in types and path:
        files = tuple(_under(bag, path))
        if not files:
            raise WorkflowRefused(f"input {entity_id}: no file of the crate's payload is in that folder")
        return _Input(entity_id, name, many, files, path, None)
    if not path or path not in bag.payload:
        raise WorkflowRefused(
            f"input {entity_id} is not a file in the crate's payload; put it under data/ in the bag "
            "(listed in its manifests) with that path"
        )
    return _Input(entity_id, name, many, (path,), None, None)


def _typed(value: Any, parameter: Mapping[str, Any], entity_id: str) -> Any:
    """A PropertyValue's value as the CWL job takes it, by its FormalParameter's additionalType."""
    kinds = {k.rsplit("/", 1)[-1].rsplit("#", 1)[-1].lower() for k in _ids(parameter.get("additionalType"))}
    try:
        if kinds & {"integer", "int"}:
            return int(value)
        if kinds & {"float", "number"}:
            return float(value)
        if kinds & {"boolean", "bool"}:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "false"):
                return str(value).lower() == "true"
            raise ValueError(value)
    except (TypeError, ValueError):
        said = ", ".join(_ids(parameter.get("additionalType")))
        raise WorkflowRefused(
            f"input {entity_id}: {value!r} is not a valid {said}, the additionalType of its FormalParameter"
        ) from None
    if kinds & {"file", "dataset", "directory"}:
        if not isinstance(value, str) or not value.startswith("/"):
            raise WorkflowRefused(
                f"input {entity_id}: a File or Directory value is a path inside the TRE (such as "
                f"/data/omop, a dataset the TRE grants), not {value!r}"
            )
        return {"class": "File" if "file" in kinds else "Directory", "path": value}
    return value


class _Reader:
    """Payload files as the text of content inputs."""

    def __init__(self, bag: Bag, max_bytes: int) -> None:
        self.bag, self.max_bytes = bag, max_bytes

    def text(self, path: str) -> str:
        size = self.bag.payload[path].size
        if size > self.max_bytes:
            raise WorkflowRefused(
                f"data/{path}: {size} bytes; a file travels to a TRE as TES content, at most "
                f"{self.max_bytes} bytes: make it smaller, or ask the TRE to grant the data as a dataset"
            )
        try:
            text = self.bag.read(path, self.max_bytes).decode("utf-8")
        except UnicodeDecodeError:
            raise WorkflowRefused(
                f"data/{path} is not UTF-8 text; a file travels to a TRE as TES content, which is text: "
                "send it as text (CSV, JSON...) or leave it out"
            ) from None
        if not text:
            raise WorkflowRefused(
                f"data/{path} is empty; TES content cannot be empty: add a line or leave it out"
            )
        return text


def _files(inputs: list[_Input]) -> Iterator[tuple[_Input, str]]:
    for item in inputs:
        for path in item.files:
            yield item, path


def _over_cap(count: int, what: str) -> None:
    if count > DEFAULT_CAPS.inputs:
        raise WorkflowRefused(
            f"{count} files to send ({what}); a task carries at most {DEFAULT_CAPS.inputs} inputs: send "
            "fewer, or bundle small text files into one"
        )


# --- the task ---------------------------------------------------------------------------------------


def _tes_task(
    reader: _Reader, main: str, inputs: list[_Input], project: str, name: str | None
) -> TaskRequest:
    document = _parse_json(reader.text(main).encode(), f"data/{main}")
    given = document.get("inputs")
    declared: list[Any] = given if isinstance(given, list) else []
    task_inputs = [dict(i) if isinstance(i, dict) else i for i in declared]
    # The task's own inputs with neither content nor url, by name: the crate's files fill them.
    open_slots = {
        i["name"]: n
        for n, i in enumerate(task_inputs)
        if isinstance(i, dict)
        and isinstance(i.get("name"), str)
        and not i.get("content")
        and not i.get("url")
    }
    for item in inputs:
        if item.files:
            continue
        raise WorkflowRefused(
            f"input {item.id} is a value; a TES task takes files only: put the value in the task document "
            "(an executor's command or env)"
        )
    _over_cap(len(task_inputs) + sum(len(i.files) for i in inputs), "the task's inputs and the crate's")
    filled: set[str] = set()
    for item, path in _files(inputs):
        text = reader.text(path)
        slot = open_slots.get(item.parameter or "") if item.folder is None else None
        if slot is not None:
            if item.parameter in filled:
                raise WorkflowRefused(f"two inputs fill the task's input {item.parameter!r}; give it one")
            filled.add(item.parameter or "")
            task_inputs[slot]["content"] = text
        else:
            task_inputs.append(
                {"name": item.parameter or path, "path": f"{INPUTS_DIR}/{path}", "content": text}
            )
    for slot_name, n in open_slots.items():
        if slot_name not in filled:
            raise WorkflowRefused(
                f"data/{main}: inputs.{n} ({slot_name!r}) has no url or content and no input of the crate "
                f"fills it: add a File to the CreateAction's object whose exampleOfWork is a FormalParameter "
                f"named {slot_name!r}"
            )
    given = document.get("tags")
    tags: dict[str, Any] = given if isinstance(given, dict) else {}
    named = {str(v).strip().lower() for k, v in tags.items() if k.lower() == "project" and v}
    if named - {project}:
        raise WorkflowRefused(
            f"data/{main}: its tag project names {', '.join(sorted(named))}, but the crate is for project "
            f"{project} (its sourceOrganization); remove the tag or make them agree"
        )
    document = {
        **document,
        "inputs": task_inputs,
        "tags": {**{k: v for k, v in tags.items() if k.lower() != "project"}, "project": project},
    }
    if name and not document.get("name"):
        document["name"] = name
    return _valid(document, f"data/{main}")


def _cwl_task(
    reader: _Reader,
    folder: str,
    main: str,
    inputs: list[_Input],
    project: str,
    name: str | None,
    runner_image: str | None,
) -> TaskRequest:
    if runner_image is None:
        raise WorkflowRefused(
            "no runner image for CWL workflows is offered for this crate's TREs; send a TES task "
            "document, or ask a TRE admin to offer one (workflow_runners)"
        )
    relative = {
        p[len(folder) + 1 :]: p
        for p in _under(reader.bag, folder)
        if travels(p[len(folder) + 1 :]) and p[len(folder) + 1 :] not in _NOT_SENT
    }
    job: dict[str, Any] = {}
    data: dict[str, str] = {}
    _over_cap(len(relative) + sum(len(i.files) for i in inputs) + bool(inputs), "the workflow's and inputs")
    for item in inputs:
        if item.parameter is None:
            raise WorkflowRefused(
                f"input {item.id} does not say which CWL input it is: give it exampleOfWork, a "
                "FormalParameter whose name is the CWL input's id"
            )
        for path in item.files:
            data[f"{INPUTS_DIR}/{path}"] = reader.text(path)
        if item.folder is not None:
            value: Any = {"class": "Directory", "path": f"{INPUTS_DIR}/{item.folder}"}
        elif item.files:
            value = {"class": "File", "path": f"{INPUTS_DIR}/{item.files[0]}"}
        else:
            value = item.value
        if item.many:
            job.setdefault(item.parameter, []).append(value)
        elif item.parameter in job:
            raise WorkflowRefused(
                f"two inputs are given for the CWL input {item.parameter!r}; give one, or mark its "
                "FormalParameter multipleValues: true for an array"
            )
        else:
            job[item.parameter] = value
    if job:
        data[JOB_PATH] = json.dumps(job, indent=2, sort_keys=True) + "\n"
    workflow = Workflow(
        engine="cwl",
        main=main[len(folder) + 1 :],
        files={rel: reader.text(path) for rel, path in sorted(relative.items())},
    )
    try:
        document = workflow_task(
            workflow,
            job=JOB_PATH if job else None,
            data=data,
            project=project,
            name=name,
            image=runner_image,
        )
    except WorkflowError as exc:
        raise WorkflowRefused(str(exc)) from None
    return _valid(document, f"the task made from data/{main}")


def _valid(document: dict[str, Any], where: str) -> TaskRequest:
    try:
        task = TaskRequest.model_validate_json(json.dumps(document))
    except ValidationError as exc:
        mistakes = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'task'}: {error['msg']}"
            for error in exc.errors()
        )
        raise WorkflowRefused(f"{where} is not a valid TES task: {mistakes}") from None
    over = DEFAULT_CAPS.refusal(task.model_dump(exclude_none=True), "this gateway")
    if over:
        raise WorkflowRefused(f"{where}: {over}")
    return task
