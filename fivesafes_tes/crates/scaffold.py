"""A request crate (5s-crate 0.4) scaffolded from a TES task file or a CWL workflow: what
`fivesafes-tes crate new` writes, and what `ro-crates/` holds.

The metadata is built with `rocrate` (ro-crate-py 0.16, `ROCrate(version="1.2")`: the descriptor's
`conformsTo` and the context are RO-Crate 1.2, as the profile asks). The bag is written by
`crates.bagit.write_bag`.
The workflow in `mainEntity` follows the conventions `crates.workflow` reads at intake: a folder
`workflow/` that is a Workflow RO-Crate of its own (its `ro-crate-metadata.json` names the workflow
file, with its `programmingLanguage`: the GA4GH TES schema for a TES task document `*.tes.json`, or
CWL), and inputs that are the CreateAction's `object`, each tied by `exampleOfWork` to a
FormalParameter named for the input it fills: a file in the crate, or a PropertyValue.
"""

from __future__ import annotations

import io
import json
import posixpath
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO

from fivesafes_tes.crates.workflow import CWL_LANGUAGE, TES_LANGUAGE
from fivesafes_tes.workflows import travels

PROFILE = "https://w3id.org/5s-crate/0.4"
RO_CRATE_1_2 = "https://w3id.org/ro/crate/1.2"
WORKFLOW_RO_CRATE = "https://w3id.org/workflowhub/workflow-ro-crate/1.0"
POTENTIAL = "http://schema.org/PotentialActionStatus"
METADATA = "ro-crate-metadata.json"
WORKFLOW_FOLDER = "workflow"
INPUTS_FOLDER = "inputs"
TES_TASK_FILE = "task.tes.json"
MAX_FILES = 100  # a task carries at most this many inputs (tes.caps), and the workflow travels as inputs
LANGUAGES: dict[str, dict[str, Any]] = {
    "cwl": {
        "@id": CWL_LANGUAGE,
        "@type": "ComputerLanguage",
        "name": "Common Workflow Language",
        "alternateName": "CWL",
        "url": {"@id": "https://www.commonwl.org/"},
    },
    "tes": {
        "@id": TES_LANGUAGE,
        "@type": "ComputerLanguage",
        "name": "GA4GH Task Execution Service task",
        "alternateName": "TES",
        "version": "1.1",
        "url": {"@id": TES_LANGUAGE},
    },
}
# The FormalParameter additionalType of a CWL job value, as crates.workflow reads it back.
_CWL_TYPES = {bool: "Boolean", int: "Integer", float: "Float", str: "Text"}


class ScaffoldError(ValueError):
    """The crate cannot be made from what was given; the message says what to change."""


@dataclass(frozen=True)
class Requester:
    """The person asking. The gateway makes whoever submits the crate its agent, so these are for the
    crate's readers only."""

    name: str | None = None
    orcid: str | None = None


@dataclass(frozen=True)
class Input:
    """One input of the run: a file the crate carries (`data`), or a value (`value`; for a CWL File or
    Directory, a path inside the TRE such as /data/omop)."""

    parameter: str
    kind: str  # the FormalParameter's additionalType: File, Dataset, Text, Integer, Float, Boolean
    value: Any = None
    data: bytes | None = None
    filename: str | None = None  # where a carried file goes, under inputs/


@dataclass(frozen=True)
class WorkflowSource:
    """What goes into `mainEntity`: the workflow folder's files (path in it -> bytes), which one is the
    workflow, its language, and the run's inputs."""

    language: str  # "tes" | "cwl"
    main: str
    files: dict[str, bytes]
    inputs: list[Input] = field(default_factory=list)
    title: str | None = None


@dataclass(frozen=True)
class Scaffold:
    """A whole request crate: the bag's folder name, its bag-info, and its payload (under data/)."""

    root: str
    bag_info: dict[str, str]
    metadata: dict[str, Any]
    files: dict[str, bytes]  # payload path -> bytes, besides the metadata file

    def payload(self) -> dict[str, bytes]:
        return {METADATA: json_bytes(self.metadata), **self.files}


def json_bytes(document: Mapping[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()


# --- what runs ---------------------------------------------------------------------------------------


def from_tes(task_file: Path) -> WorkflowSource:
    """A TES task document, run as given. Each input with literal `content` becomes a file the crate
    carries (under inputs/), which fills that input again at intake: the request's inputs are then
    data entities a TRE's reviewer sees, not text hidden in the task."""
    try:
        task = json.loads(task_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScaffoldError(f"{task_file}: not a readable JSON TES task ({exc})") from None
    if not isinstance(task, dict) or not task.get("executors"):
        raise ScaffoldError(f"{task_file}: a TES task needs 'executors' (docs/api.md)")
    inputs: list[Input] = []
    declared = []
    taken: set[str] = set()
    for item in task.get("inputs") or []:
        if not isinstance(item, dict) or "content" not in item:
            declared.append(item)
            continue
        parameter = item.get("name") or item.get("path")
        if not isinstance(parameter, str) or not parameter or parameter in {i.parameter for i in inputs}:
            raise ScaffoldError(f"{task_file}: each content input needs a distinct name or path ({item!r})")
        filename = _unique(PurePosixPath(str(item.get("path") or parameter)).name or "input", taken)
        inputs.append(Input(parameter, "File", data=str(item["content"]).encode(), filename=filename))
        declared.append({k: v for k, v in item.items() if k != "content"} | {"name": parameter})
    document = {**task, "inputs": declared} if "inputs" in task else task
    return WorkflowSource(
        language="tes",
        main=TES_TASK_FILE,
        files={TES_TASK_FILE: json_bytes(document)},
        inputs=inputs,
        title=task.get("name") if isinstance(task.get("name"), str) else None,
    )


def from_cwl(workflow: Path, job: Path | None = None, root: Path | None = None) -> WorkflowSource:
    """A CWL workflow and every file under `root` (default: its own folder) that a workflow sends
    (`workflows.travels`), with the job file's values as the run's inputs."""
    workflow, base = workflow.resolve(), (root or workflow.parent).resolve()
    if not workflow.is_file():
        raise ScaffoldError(f"{workflow} is not a file")
    if base not in workflow.parents:
        raise ScaffoldError(f"{workflow} is not under --root {base}")
    files = _read_folder(base)
    inputs: list[Input] = []
    if job is not None:
        job = job.resolve()
        if base in job.parents:
            files.pop(job.relative_to(base).as_posix(), None)  # its values are the CreateAction's object
        inputs = _job_inputs(job)
    return WorkflowSource(
        language="cwl", main=workflow.relative_to(base).as_posix(), files=files, inputs=inputs
    )


def _job_inputs(job: Path) -> list[Input]:
    import yaml

    try:
        values = yaml.safe_load(job.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ScaffoldError(f"{job}: cannot read the job file ({exc})") from None
    if not isinstance(values, dict):
        raise ScaffoldError(f"{job}: a CWL job file maps input names to values")
    inputs: list[Input] = []
    taken: set[str] = set()
    for name, value in sorted(values.items()):
        if isinstance(value, dict) and value.get("class") in ("File", "Directory"):
            where = str(value.get("path") or value.get("location") or "").removeprefix("file://")
            kind = "File" if value["class"] == "File" else "Dataset"
            if where.startswith("/"):
                inputs.append(Input(str(name), kind, value=where))  # a path inside the TRE: /data/...
                continue
            local = (job.parent / where).resolve()
            if kind != "File" or not local.is_file():
                raise ScaffoldError(
                    f"{job}: input {name} ({where}) must be a file next to the job, or a path inside the TRE "
                    "such as /data/omop (a dataset the TRE grants)"
                )
            filename = _unique(local.name, taken)
            inputs.append(Input(str(name), "File", data=local.read_bytes(), filename=filename))
        elif type(value) in _CWL_TYPES:
            inputs.append(Input(str(name), _CWL_TYPES[type(value)], value=value))
        else:
            raise ScaffoldError(
                f"{job}: input {name} is {type(value).__name__}; crate new takes files, folders inside the "
                "TRE and single values (write arrays and records into the crate by hand: ro-crates/README.md)"
            )
    return inputs


def _read_folder(base: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for path in sorted(base.rglob("*")):
        relative = path.relative_to(base).as_posix()
        if not travels(relative) or path.is_symlink() or not path.is_file():
            continue
        files[relative] = path.read_bytes()
    if len(files) > MAX_FILES:
        raise ScaffoldError(f"{len(files)} files under {base}; at most {MAX_FILES}: choose a smaller --root")
    return files


def _unique(name: str, taken: set[str]) -> str:
    stem, suffix, n = PurePosixPath(name).stem, PurePosixPath(name).suffix, 1
    candidate = name
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}{suffix}"
    taken.add(candidate)
    return candidate


# --- the crate ---------------------------------------------------------------------------------------


def request_crate(
    source: WorkflowSource,
    *,
    project: str,
    name: str | None = None,
    requester: Requester = Requester(),
    license: str | None = None,
    created: datetime | None = None,
) -> Scaffold:
    """The request crate for `source`, on behalf of `project`, with a fresh External-Identifier and a
    fresh id for the requested run (a different UUID, as the profile asks)."""
    from rocrate.model.contextentity import ContextEntity
    from rocrate.model.person import Person

    if not project.strip():
        raise ScaffoldError("name the project the request is for (--project), e.g. diabetes-cancer")
    if requester.orcid and not requester.orcid.startswith("https://orcid.org/"):
        raise ScaffoldError(f"--orcid {requester.orcid!r}: give it as https://orcid.org/0000-0000-0000-0000")
    when = (created or datetime.now(UTC)).replace(microsecond=0).isoformat()
    title = name or source.title or f"{source.language} workflow {source.main}"

    crate = _crate(title, f"A Five Safes request: run {title} in the TREs of project {project}.", when)
    root = crate.root_dataset
    root["conformsTo"] = {"@id": PROFILE}
    if license:
        named = license.rstrip("/").rsplit("/", 1)[-1]  # an SPDX URL's identifier, e.g. Apache-2.0
        root["license"] = crate.add(ContextEntity(crate, license, {"@type": "CreativeWork", "name": named}))
    crate.add(ContextEntity(crate, PROFILE, {"@type": "Profile", "name": "Five Safes RO-Crate profile"}))
    team = crate.add(
        ContextEntity(crate, f"#project-{_slug(project)}", {"@type": "Project", "name": project})
    )
    root["sourceOrganization"] = team
    person_properties: dict[str, Any] = {"memberOf": [{"@id": team.id}]}
    if requester.name:
        person_properties["name"] = requester.name
    person = crate.add(Person(crate, requester.orcid or "#requester", person_properties))

    files = {f"{WORKFLOW_FOLDER}/{path}": data for path, data in source.files.items()}
    folder = _describe_workflow(crate, source, title)
    files[f"{WORKFLOW_FOLDER}/{METADATA}"] = json_bytes(_workflow_crate(source, title, when))
    root["mainEntity"] = folder
    objects = []
    for item in source.inputs:
        entity, carried = _describe_input(crate, item)
        objects.append({"@id": entity.id})
        if carried is not None:
            files[entity.id] = carried
    action = crate.add(
        ContextEntity(
            crate,
            f"#request-{uuid.uuid4()}",
            {
                "@type": "CreateAction",
                "name": f"Run {title} for project {project}",
                "actionStatus": POTENTIAL,
                "agent": {"@id": person.id},
                "instrument": {"@id": folder.id},
                "object": objects,
            },
        )
    )
    root["mentions"] = [action]
    return Scaffold(
        root=_slug(title),
        bag_info={
            "External-Identifier": f"urn:uuid:{uuid.uuid4()}",
            "External-Description": f"Five Safes request crate: {title}",
        },
        metadata=crate.metadata.generate(),
        files=dict(sorted(files.items())),
    )


def _crate(name: str, description: str, when: str) -> Any:
    """An empty crate declared RO-Crate 1.2 (descriptor and context)."""
    from rocrate.rocrate import ROCrate

    crate = ROCrate(version="1.2")  # rocrate 0.16 defaults to 1.3; the profile names 1.2
    for key, value in (("name", name), ("description", description), ("datePublished", when)):
        crate.root_dataset[key] = value  # rocrate entities take no update()
    return crate


def _workflow_entity(crate: Any, source: WorkflowSource, path: str, title: str) -> Any:
    from rocrate.model.contextentity import ContextEntity

    properties = dict(LANGUAGES[source.language])
    if source.language == "cwl":  # RO-Crate 1.2: a ComputerLanguage MUST have its version
        version = _cwl_version(source.files[source.main])
        properties.update({"version": version, "identifier": {"@id": f"https://w3id.org/cwl/{version}/"}})
    language = crate.add(ContextEntity(crate, properties["@id"], properties))
    return crate.add_file(
        dest_path=path,
        properties={
            "@type": ["File", "SoftwareSourceCode", "ComputationalWorkflow"],
            "name": title,
            "programmingLanguage": {"@id": language.id},
            "encodingFormat": "application/json" if source.language == "tes" else "text/x-yaml",
        },
    )


def _cwl_version(text: bytes) -> str:
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScaffoldError(f"the CWL workflow is not YAML ({exc})") from None
    version = document.get("cwlVersion") if isinstance(document, dict) else None
    if not isinstance(version, str) or not version.startswith("v1."):
        raise ScaffoldError("the CWL workflow must say its cwlVersion (v1.0 to v1.2) at the top")
    return version


def _describe_workflow(crate: Any, source: WorkflowSource, title: str) -> Any:
    """The `mainEntity`: the workflow folder, conforming to Workflow RO-Crate, its files as parts."""
    if source.main not in source.files:
        raise ScaffoldError(f"the workflow file {source.main} is not among the files")
    parts = []
    for relative in sorted(source.files):
        path = f"{WORKFLOW_FOLDER}/{relative}"
        if relative == source.main:
            parts.append(_workflow_entity(crate, source, path, title))
        else:
            parts.append(crate.add_file(dest_path=path, properties={"name": relative}))
    nested = crate.add_file(
        dest_path=f"{WORKFLOW_FOLDER}/{METADATA}",
        properties={"name": "the Workflow RO-Crate's metadata", "encodingFormat": "application/ld+json"},
    )
    main = crate.dereference(f"{WORKFLOW_FOLDER}/{source.main}")
    return crate.add_dataset(
        dest_path=f"{WORKFLOW_FOLDER}/",
        properties={
            "name": f"Workflow RO-Crate: {title}",
            "conformsTo": {"@id": WORKFLOW_RO_CRATE},
            "mainEntity": {"@id": main.id},
            "hasPart": [{"@id": part.id} for part in parts],
            "subjectOf": {"@id": nested.id},
        },
    )


def _workflow_crate(source: WorkflowSource, title: str, when: str) -> dict[str, Any]:
    """The Workflow RO-Crate's own metadata (workflow/ro-crate-metadata.json): its mainEntity is the
    workflow file, with its language; this is what intake reads first."""
    crate = _crate(
        title, f"The {LANGUAGES[source.language]['alternateName']} workflow of a Five Safes request.", when
    )
    crate.root_dataset["conformsTo"] = {"@id": WORKFLOW_RO_CRATE}
    parts = []
    for relative in sorted(source.files):
        if relative == source.main:
            parts.append(_workflow_entity(crate, source, relative, title))
        else:
            parts.append(crate.add_file(dest_path=relative, properties={"name": relative}))
    crate.root_dataset["mainEntity"] = crate.dereference(source.main)
    crate.root_dataset["hasPart"] = parts
    metadata: dict[str, Any] = crate.metadata.generate()
    return metadata


def _describe_input(crate: Any, item: Input) -> tuple[Any, bytes | None]:
    """The input's data entity (a File the crate carries, or a PropertyValue) and its FormalParameter."""
    from rocrate.model.contextentity import ContextEntity

    parameter = crate.add(
        ContextEntity(
            crate,
            f"#param-{_slug(item.parameter)}",
            {"@type": "FormalParameter", "name": item.parameter, "additionalType": item.kind},
        )
    )
    if item.data is not None:
        entity = crate.add_file(
            dest_path=f"{INPUTS_FOLDER}/{item.filename}",
            properties={
                "name": item.parameter,
                "contentSize": str(len(item.data)),
                "exampleOfWork": {"@id": parameter.id},
            },
        )
        return entity, item.data
    entity = crate.add(
        ContextEntity(
            crate,
            f"#input-{_slug(item.parameter)}",
            {
                "@type": "PropertyValue",
                "name": item.parameter,
                "value": item.value,
                "exampleOfWork": {"@id": parameter.id},
            },
        )
    )
    return entity, None


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text.lower()).strip("-.") or "request"


# --- writing it -------------------------------------------------------------------------------------


def write_zip(scaffold: Scaffold, out: BinaryIO) -> None:
    """The crate as a BagIt zip (sha512 and sha256 manifests), ready for `fivesafes-tes submit`."""
    _write_bag(out, scaffold.root, scaffold.payload(), scaffold.bag_info)


def write_directory(scaffold: Scaffold, target: Path) -> None:
    """The same bag unzipped as the folder `target` (bagit.txt, the manifests, data/)."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ScaffoldError(f"{target} is not an empty folder: choose a new one, or remove it first")
    buffer = io.BytesIO()
    write_zip(scaffold, buffer)
    with zipfile.ZipFile(buffer) as archive:
        for info in archive.infolist():
            _, _, inside = info.filename.partition("/")
            if info.is_dir() or not inside:
                continue
            path = target.joinpath(*inside.split("/"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(archive.read(info))


def zip_directory(bag: Path, out: BinaryIO, *, fresh_identifier: bool = True) -> str:
    """A bag folder (such as one under ro-crates/), verified against its own manifests, written as a
    zip to submit; with `fresh_identifier` (the default) under a new External-Identifier, since each
    request SHOULD have its own. Returns the zip's External-Identifier."""
    from fivesafes_tes.crates.bagit import BagRefused, open_bag

    with _zipped_as_is(bag) as spooled:
        try:
            with open_bag(spooled) as verified:
                bag_info = {key: values[0] for key, values in verified.bag_info.items() if values}
                payload = {
                    path: verified.read(path, verified.payload[path].size)
                    for path in sorted(verified.payload)
                }
        except BagRefused as exc:
            raise ScaffoldError(f"{bag} is not a valid bag: {exc}") from None
    for written_anew in ("Bagging-Date", "Payload-Oxum", "Bag-Size"):
        bag_info.pop(written_anew, None)
    if fresh_identifier:
        bag_info["External-Identifier"] = f"urn:uuid:{uuid.uuid4()}"
    _write_bag(out, bag.name, payload, bag_info)
    return bag_info["External-Identifier"]


def bag_crate_folder(folder: Path, out: BinaryIO) -> str:
    """An RO-Crate folder (its ro-crate-metadata.json at the top, as `rocrate`'s `crate.write` or a
    hand-made crate leaves it) bagged as the payload of a new bag, zipped: BagIt 1.0, sha512 and
    sha256 manifests, a fresh External-Identifier. Returns that identifier."""
    if not (folder / METADATA).is_file():
        raise ScaffoldError(f"{folder} has no {METADATA}: it is not an RO-Crate folder")
    payload: dict[str, bytes] = {}
    for file in sorted(folder.rglob("*")):
        if file.is_symlink():
            raise ScaffoldError(f"{file} is a link; a crate holds regular files only")
        if file.is_file():
            payload[file.relative_to(folder).as_posix()] = file.read_bytes()
    identifier = f"urn:uuid:{uuid.uuid4()}"
    _write_bag(out, folder.resolve().name, payload, {"External-Identifier": identifier})
    return identifier


def _write_bag(out: BinaryIO, root: str, payload: Mapping[str, bytes], bag_info: Mapping[str, str]) -> None:
    from fivesafes_tes.crates.bagit import BagEntry, write_bag

    write_bag(
        out, root, [BagEntry(path=path, open=_opener(payload[path])) for path in sorted(payload)], bag_info
    )


def _opener(data: bytes) -> Callable[[], IO[bytes]]:
    return lambda: io.BytesIO(data)


@contextmanager
def _zipped_as_is(bag: Path) -> Iterator[Path]:
    """The folder zipped byte for byte (manifests and all) in a temporary file, for `open_bag`."""
    with tempfile.TemporaryDirectory(prefix="fivesafes-crate-") as scratch:
        path = Path(scratch) / "bag.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(bag.rglob("*")):
                if file.is_symlink():
                    raise ScaffoldError(f"{file} is a link; a bag holds regular files only")
                if file.is_file():
                    archive.write(file, posixpath.join(bag.name, file.relative_to(bag).as_posix()))
        yield path
