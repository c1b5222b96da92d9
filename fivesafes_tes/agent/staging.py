"""Turn a leased TES task into a sandbox run (what goes where inside the container, checked against the
TRE's policy) and, afterwards, pick what it left that is held. Inputs come from allowed sources only;
where anything lives is the backend's business (`executors.hostdirs`, the Kubernetes filer)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from fivesafes_tes.agent.policy import TrePolicy
from fivesafes_tes.egress.held import HeldKey, LogKey, OutputKey, Stream
from fivesafes_tes.executors import Collected, DatasetMount, InputFile, Limits, RequestRefused, RunSpec, Step
from fivesafes_tes.executors.sandbox import POLICY as SANDBOX
from fivesafes_tes.tes import outputs
from fivesafes_tes.tes.admission import Admission, PublishedCaps, ReservedPath

DATA_ROOT = "/data"  # datasets are mounted at DATA_ROOT/<name>; the rest of it is the task's
RESERVED_ENV = ("FIVESAFES_", "DOCKER_", "KUBERNETES_", "AWS_")
INPUT_URL_SCHEMES: tuple[str, ...] = ()  # inputs come as literal content, or as granted datasets


class StagingRefused(RequestRefused):
    """The task asks for something this TRE does not allow; the message tells the researcher what."""


def reserved_paths(policy: TrePolicy, project: str | None = None) -> tuple[ReservedPath, ...]:
    """Every container path a task may not use for an input, output folder or volume: the sandbox's
    own, and the mount point of each dataset granted to `project` (of every dataset of the TRE when
    None). The one list: staging refuses by it, and the TRE publishes it (`admission`)."""
    datasets = policy.datasets if project is None else policy.datasets_for(project)
    return (*SANDBOX.own_paths(), *_dataset_paths(datasets))


def _dataset_paths(names: Iterable[str]) -> tuple[ReservedPath, ...]:
    return tuple(
        ReservedPath(path=f"{DATA_ROOT}/{name}", below=True, why=f"dataset {name} is mounted there read-only")
        for name in sorted(names)
    )


def admission(policy: TrePolicy, tre: str) -> Admission:
    """What this TRE tells the gateway it will run. `prepare` checks every task against this same
    document, so a refusal at the gateway is word for word the one this TRE would give."""
    caps = policy.caps
    return Admission(
        tre=tre,
        allowed_images=list(policy.allowed_images),
        input_url_schemes=list(INPUT_URL_SCHEMES),
        reserved_paths=list(SANDBOX.own_paths()),
        project_reserved_paths={
            project: list(_dataset_paths(policy.datasets_for(project)))
            for project in sorted(policy.grants)
            if policy.datasets_for(project)
        },
        reserved_env_prefixes=list(RESERVED_ENV),
        caps=PublishedCaps(
            executors=caps.executors,
            inputs=caps.inputs,
            outputs=caps.outputs,
            volumes=caps.volumes,
            env_vars=caps.env_vars,
        ),
        workflow_languages=list(policy.workflow_languages),
        workflow_runners={
            language: policy.workflow_runners[language]
            for language in policy.workflow_languages
            if language != "tes"
        },
    )


def _normal(path: str) -> str:
    """A path `admission` let through, as the engine reads it."""
    normal = outputs.normal_path(path)
    if normal is None:
        raise StagingRefused(f"{path!r} must be an absolute path below / without '..'")
    return normal


def _output_dir(output: dict[str, Any]) -> str:
    """The container folder an output is collected from, mounted writable."""
    return _normal(outputs.output_folder(output)[1])


def prepare(
    task: dict[str, Any],
    *,
    child_id: str,
    attempt: int,
    tre: str,
    project: str,
    policy: TrePolicy,
    run_as: str,
) -> RunSpec:
    """Check the task against this TRE's policy and describe its run: what goes where inside the
    container, nothing of where it lives (the backend places it)."""
    refused = admission(policy, tre).refusal(task, project)
    if refused:
        raise StagingRefused(refused)
    reserved = reserved_paths(policy, project)
    writable = list(
        dict.fromkeys(
            [
                *(_normal(v) for v in task.get("volumes") or []),
                *(_output_dir(o) for o in task.get("outputs") or []),
            ]
        )
    )
    inputs: list[InputFile] = []
    for n, item in enumerate(task.get("inputs") or []):
        target = _normal(item["path"])
        if target in writable:
            raise StagingRefused(f"input path {target!r} is also an output or volume directory")
        # A file mounted at a parent of a reserved mount point would leave nowhere to mount it.
        covered = next((r for r in reserved if PurePosixPath(target) in PurePosixPath(r.path).parents), None)
        if covered is not None and not any(_inside(target, w) for w in writable):
            raise StagingRefused(f"input path {target!r} is a file where {covered.why} ({covered.path})")
        if item.get("content") is None:
            raise StagingRefused(
                f"input {n} ({target}) comes from {item.get('url')!r}; {tre} stages only literal content and "
                f"the datasets granted to the project (mounted under {DATA_ROOT})"
            )
        inputs.append(InputFile(target=target, content=item["content"].encode()))
    steps = [
        Step(
            image=e["image"],
            command=list(e["command"]),
            workdir=e.get("workdir"),
            stdin=e.get("stdin"),
            stdout=e.get("stdout"),
            stderr=e.get("stderr"),
            env=dict(e.get("env") or {}),
            ignore_error=bool(e.get("ignore_error")),
        )
        for e in task["executors"]
    ]
    limits: Limits = policy.limits_for(task.get("resources"))
    return RunSpec(
        child_id=child_id,
        attempt=attempt,
        tre=tre,
        steps=steps,
        limits=limits,
        inputs=inputs,
        writable=writable,
        datasets=[DatasetMount(name, f"{DATA_ROOT}/{name}") for name in policy.datasets_for(project)],
        user=run_as,
    )


def _inside(path: str, directory: str) -> bool:
    return PurePosixPath(directory) in PurePosixPath(path).parents


def claimed(task: dict[str, Any], collected: Collected, steps_run: int) -> dict[HeldKey, Path]:
    """What the run left that is held: every file the task's outputs claim, and the captured logs of
    each step that ran; each held key with the local file behind it."""
    files: dict[HeldKey, Path] = {}
    for output in task.get("outputs") or []:
        folder = _output_dir(output)
        for path, local in sorted(collected.files.items()):
            if _inside(path, folder) and outputs.claim(output, path) is not None:
                files.setdefault(OutputKey(path), local)
    for (n, stream), local in sorted(collected.logs.items()):
        if n < steps_run:
            files[LogKey(n, Stream(stream))] = local
    return files
