"""A whole workflow as one TES task: it runs inside each TRE as one child, every step in the sandbox.

Workflow engines' own TES modes send each step as a task of its own and move files between steps
through storage every task can reach (a shared file system for Toil and cwl-tes, S3 for Snakemake).
A TRE gives a task neither, so here the engine itself is the task: the runner image
(`devimages.RUNNER_IMAGE`, entry point `workflow_runner.py`) runs cwltool or Snakemake over the
datasets the TRE grants, intermediates stay in the container's /tmp, and only what the runner puts
in /outputs, the task's one declared output, is held in the TRE's airlock for review.

`workflow_task` builds that task from the workflow's files, held in memory; `read_workflow` collects
them from disk (`fivesafes-tes submit-workflow`), `crates.workflow` from a request crate's payload.
The files travel as literal `content` inputs (the one kind of input every TRE stages), under /workflow.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fivesafes_tes.devimages import RUNNER_IMAGE
from fivesafes_tes.tes.admission import RUNNER_COMMAND
from fivesafes_tes.tes.caps import DEFAULT_CAPS
from fivesafes_tes.workflow_runner import OUTPUTS, safe_target

WORKFLOW_DIR = "/workflow"
OUTPUTS_DIR = str(OUTPUTS)
ENGINES = ("cwl", "snakemake")
_SKIPPED_DIRS = ("__pycache__", ".snakemake", ".git")


class WorkflowError(ValueError):
    """The workflow cannot be sent as given; the message says what to change."""


@dataclass(frozen=True)
class Workflow:
    engine: str
    main: str  # path of the workflow file relative to the root
    files: dict[str, str]  # relative path -> text, everything under the root


def travels(relative: str) -> bool:
    """Whether a file at `relative` under a workflow's root folder is sent with it: hidden files and
    caches (`__pycache__`, `.snakemake`, `.git`) are not."""
    return not any(part.startswith(".") or part in _SKIPPED_DIRS for part in PurePosixPath(relative).parts)


def engine_for(path: str) -> str:
    """`cwl` for a .cwl file, `snakemake` for a Snakefile or a .smk file."""
    name = posixpath.basename(path)
    if name.endswith(".cwl"):
        return "cwl"
    if name == "Snakefile" or name.endswith(".smk"):
        return "snakemake"
    raise WorkflowError(
        f"{path}: cannot tell the engine; name a CWL workflow *.cwl and a Snakemake one Snakefile or *.smk"
    )


def read_workflow(main: Path, root: Path | None = None) -> Workflow:
    """The workflow file and every file under `root` (default: the workflow's own folder) as text."""
    main, root = main.resolve(), (root or main.parent).resolve()
    if not main.is_file():
        raise WorkflowError(f"{main} is not a file")
    if root != main.parent and root not in main.parents:
        raise WorkflowError(f"{main} is not under --root {root}")
    files: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not travels(relative.as_posix()):
            continue
        if path.is_symlink() or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise WorkflowError(
                f"{path} is not UTF-8 text; a workflow's files travel as TES text content: "
                "move it out of the root folder"
            ) from None
        if not text:
            raise WorkflowError(f"{path} is empty; TES content cannot be empty: add a line or remove it")
        files[relative.as_posix()] = text
    main_rel = main.relative_to(root).as_posix()
    return Workflow(engine=engine_for(main_rel), main=main_rel, files=files)


def workflow_task(
    workflow: Workflow,
    *,
    job: str | None = None,
    outputs: list[str] | None = None,
    config: list[str] | None = None,
    tres: list[str] | None = None,
    project: str | None = None,
    name: str | None = None,
    cores: int = 1,
    ram_gb: float | None = None,
    output_url: str | None = None,
    image: str = RUNNER_IMAGE,
    data: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The TES task that runs `workflow` whole inside each TRE.

    `job` (CWL) is the job file's path relative to the root, or one of `data`'s container paths;
    `outputs` (Snakemake) are the final targets, relative to the working directory, that the runner
    publishes; `config` are Snakemake KEY=VALUE settings; `data` are more text files the run reads,
    by absolute container path outside /workflow (a request crate's inputs). Raises WorkflowError
    naming what to change.
    """
    outputs, config, data = list(outputs or []), list(config or []), dict(data or {})
    if workflow.main not in workflow.files:
        raise WorkflowError(f"the workflow file {workflow.main} is not among the files sent")
    for path in data:
        if not path.startswith("/") or PurePosixPath(WORKFLOW_DIR) in PurePosixPath(path).parents:
            raise WorkflowError(f"{path}: a data file needs an absolute path outside {WORKFLOW_DIR}")
    command = [RUNNER_COMMAND, workflow.engine, f"{WORKFLOW_DIR}/{workflow.main}"]
    if workflow.engine == "cwl":
        if outputs or config:
            raise WorkflowError(
                "--output and --config are for Snakemake; cwltool publishes the CWL workflow's own "
                "outputs, and its inputs come from the job file (--job)"
            )
        if job in data:
            command.append(job)
        elif job is not None:
            if job not in workflow.files:
                raise WorkflowError(f"the job file {job} must be under the root folder, which is sent whole")
            command.append(f"{WORKFLOW_DIR}/{job}")
    else:
        if job is not None:
            raise WorkflowError("--job is for CWL; give Snakemake settings with --config KEY=VALUE")
        if not outputs:
            raise WorkflowError(
                "name the final outputs of the Snakemake workflow with --output (for example "
                "--output results/counts.csv): only they leave the run, for review"
            )
        for target in outputs:
            try:
                command += ["--output", safe_target(target)]
            except ValueError as exc:
                raise WorkflowError(str(exc)) from None
        command += ["--cores", str(cores)]
        for setting in config:
            if "=" not in setting:
                raise WorkflowError(f"--config {setting!r} must be KEY=VALUE")
            command += ["--config", setting]
    if len(workflow.files) + len(data) > DEFAULT_CAPS.inputs:
        with_data = f" and {len(data)} data files" if data else ""
        raise WorkflowError(
            f"{len(workflow.files)} files under the root folder{with_data}; a task carries at most "
            f"{DEFAULT_CAPS.inputs} inputs: send a smaller folder (--root)"
        )
    resources: dict[str, Any] = {"cpu_cores": cores}
    if ram_gb is not None:
        resources["ram_gb"] = ram_gb
    tags = {"workflow_engine": workflow.engine}
    if tres:
        tags["tres"] = ",".join(tres)
    if project:
        tags["project"] = project
    title = name or f"{workflow.engine} workflow {workflow.main}"
    return {
        "name": title,
        "description": (
            f"The {workflow.engine} workflow {workflow.main}, run whole inside each TRE by {image}; "
            f"only what it publishes in {OUTPUTS_DIR} is held for review."
        ),
        "executors": [{"image": image, "command": command}],
        "inputs": [
            *(
                {"name": path, "path": f"{WORKFLOW_DIR}/{path}", "content": text}
                for path, text in sorted(workflow.files.items())
            ),
            *({"name": path, "path": path, "content": text} for path, text in sorted(data.items())),
        ],
        "outputs": [
            {
                "name": "final outputs",
                "path": OUTPUTS_DIR,
                "type": "DIRECTORY",
                "url": output_url or "s3://results/" + _slug(title),
            }
        ],
        "resources": resources,
        "tags": tags,
    }


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-") or "workflow"
