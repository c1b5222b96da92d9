"""Turn a leased TES task into a sandbox run: a workspace on the host, the mounts the container
sees, and afterwards the files it wrote. Inputs come from allowed sources only."""

from __future__ import annotations

import posixpath
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fivesafes_tes.agent.policy import TrePolicy
from fivesafes_tes.egress.held import HeldKey, LogKey, OutputKey, Stream, name_of
from fivesafes_tes.executors import Limits, Mount, RequestRefused, RunSpec, Step
from fivesafes_tes.executors.sandbox import POLICY as SANDBOX
from fivesafes_tes.tes import outputs
from fivesafes_tes.tes.admission import Admission, PublishedCaps, ReservedPath

DATA_ROOT = "/data"  # datasets are mounted at DATA_ROOT/<name>; the rest of it is the task's
RESERVED_ENV = ("FIVESAFES_", "DOCKER_", "KUBERNETES_", "AWS_")
INPUT_URL_SCHEMES: tuple[str, ...] = ()  # inputs come as literal content, or as granted datasets


class StagingRefused(RequestRefused):
    """The task asks for something this TRE does not allow; the message tells the researcher what."""


@dataclass(frozen=True)
class Workspace:
    """A run's folder on the host: its logs, and one folder per writable container path. Where a
    file is follows from the child's folder alone, so collecting after a restart needs nothing else."""

    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def host_dir(self, kind: str, container_path: str) -> Path:
        """A host directory standing for `container_path`; the path is flattened, never joined raw."""
        safe = container_path.strip("/").replace("/", "__") or "_root"
        return self.root / kind / safe


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
    root: Path,
    run_as: str,
) -> RunSpec:
    """Check the task against this TRE's policy, lay out its workspace, and describe the run."""
    refused = admission(policy, tre).refusal(task, project)
    if refused:
        raise StagingRefused(refused)
    reserved = reserved_paths(policy, project)
    writable_paths = [
        *(_normal(v) for v in task.get("volumes") or []),
        *(_output_dir(o) for o in task.get("outputs") or []),
    ]
    input_paths = [_normal(i["path"]) for i in task.get("inputs") or []]
    for target in input_paths:
        if target in writable_paths:
            raise StagingRefused(f"input path {target!r} is also an output or volume directory")
        # A file mounted at a parent of a reserved mount point would leave nowhere to mount it.
        covered = next((r for r in reserved if PurePosixPath(target) in PurePosixPath(r.path).parents), None)
        if covered is not None and not any(_inside(target, w) for w in writable_paths):
            raise StagingRefused(f"input path {target!r} is a file where {covered.why} ({covered.path})")
    workspace = Workspace(root)
    if root.exists():  # a retry after a crash starts from a clean slate
        shutil.rmtree(root)
    workspace.logs.mkdir(parents=True)
    mounts: list[Mount] = []
    for name, dataset in policy.datasets_for(project).items():
        mounts.append(Mount(source=dataset.path, target=f"{DATA_ROOT}/{name}", read_only=True))
    writable: dict[str, Path] = {}
    for target in writable_paths:
        if target not in writable:
            writable[target] = workspace.host_dir("rw", target)
            writable[target].mkdir(parents=True)
    for target in sorted(writable):
        mounts.append(Mount(source=writable[target], target=target, read_only=False))
    for n, (item, target) in enumerate(zip(task.get("inputs") or [], input_paths, strict=True)):
        if item.get("content") is None:
            raise StagingRefused(
                f"input {n} ({target}) comes from {item.get('url')!r}; {tre} stages only literal content and "
                f"the datasets granted to the project (mounted under {DATA_ROOT})"
            )
        host = workspace.root / "inputs" / str(n) / posixpath.basename(target)
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_text(item["content"])
        host.chmod(0o444)
        inside = next((w for w in writable if _inside(target, w)), None)
        if inside:  # an input inside a writable dir is copied there, not mounted over it
            dest = writable[inside] / posixpath.relpath(target, inside)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(host, dest)
        else:
            mounts.append(Mount(source=host, target=target, read_only=True))
    _open_for(run_as, [workspace.root, *writable.values()])
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
        mounts=mounts,
        limits=limits,
        logs_dir=workspace.logs,
        user=run_as,
    )


def _inside(path: str, directory: str) -> bool:
    return PurePosixPath(directory) in PurePosixPath(path).parents


def _open_for(run_as: str, paths: list[Path]) -> None:
    """Let the task's unprivileged uid write its output directories, and nothing else of ours."""
    import os

    uid, _, gid = run_as.partition(":")
    for path in paths:
        for current in [path, *path.rglob("*")] if path.is_dir() else [path]:
            if current.is_dir():
                try:
                    os.chown(current, int(uid), int(gid or uid))
                except PermissionError:
                    current.chmod(0o777)


def collect(task: dict[str, Any], workspace: Workspace, steps_run: int) -> dict[HeldKey, Path]:
    """Every file the task produced that its outputs claim, plus the captured logs of each step: each
    held key with the host file behind it. Symbolic links are never followed or collected."""
    files: dict[HeldKey, Path] = {}
    for output in task.get("outputs") or []:
        folder = _output_dir(output)
        host_folder = workspace.host_dir("rw", folder)
        for host in sorted(p for p in host_folder.rglob("*") if p.is_file() and not p.is_symlink()):
            path = f"{folder.rstrip('/')}/{host.relative_to(host_folder).as_posix()}"
            if outputs.claim(output, path) is not None:
                files.setdefault(OutputKey(path), host)
    for n in range(steps_run):
        for stream in Stream:
            key = LogKey(n, stream)
            host = workspace.logs / name_of(key)
            if host.is_file():
                files[key] = host
    return files
