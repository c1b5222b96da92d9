"""Turn a leased TES task into a sandbox run: a workspace on the host, the mounts the container
sees, and afterwards the files it wrote. Inputs come from allowed sources only."""

from __future__ import annotations

import fnmatch
import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fivesafes_tes.agent.policy import TrePolicy
from fivesafes_tes.egress.airlock import HeldFileSpec
from fivesafes_tes.executors import Limits, Mount, RequestRefused, RunSpec, Step
from fivesafes_tes.executors.sandbox import POLICY as SANDBOX
from fivesafes_tes.executors.sandbox import ReservedPath

DATA_ROOT = "/data"  # datasets are mounted at DATA_ROOT/<name>; the rest of it is the task's
RESERVED_ENV = ("FIVESAFES_", "DOCKER_", "KUBERNETES_", "AWS_")


class StagingRefused(RequestRefused):
    """The task asks for something this TRE does not allow; the message tells the researcher what."""


@dataclass
class Workspace:
    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def host_dir(self, kind: str, container_path: str) -> Path:
        """A host directory standing for `container_path`; the path is flattened, never joined raw."""
        safe = container_path.strip("/").replace("/", "__") or "_root"
        return self.root / kind / safe


def reserved_paths(policy: TrePolicy, project: str | None = None) -> tuple[ReservedPath, ...]:
    """Every container path a task may not use for an input, output or volume: the sandbox's own, and
    the mount point of each dataset granted to `project` (of every dataset of the TRE when None). The
    one list: staging refuses by it, and it is what a TRE tells others it reserves."""
    datasets = policy.datasets if project is None else policy.datasets_for(project)
    return (
        *SANDBOX.own_paths(),
        *(
            ReservedPath(f"{DATA_ROOT}/{name}", below=True, why=f"dataset {name} is mounted there read-only")
            for name in sorted(datasets)
        ),
    )


def _normal(path: str, what: str) -> str:
    normal = "/" + posixpath.normpath(path).lstrip("/")  # POSIX keeps a leading "//" apart; engines do not
    if not path.startswith("/") or normal in ("/", "/.") or ".." in path.split("/"):
        raise StagingRefused(f"{what} {path!r} must be an absolute path without '..'")
    return normal


def _allowed(path: str, what: str, reserved: tuple[ReservedPath, ...]) -> str:
    """The normal form of a path a task mounts something at, unless it is reserved."""
    normal = _normal(path, what)
    for r in reserved:
        if r.covers(normal):
            raise StagingRefused(f"{what} {path!r} is reserved: {r.why} ({r.path})")
    return normal


def _output_dir(output: dict[str, Any]) -> str:
    path = _normal(output["path"], "output path")
    if any(c in path for c in "*?["):
        return (
            _normal(output.get("path_prefix") or posixpath.dirname(path), "output path_prefix").rstrip("/")
            or "/"
        )
    if output.get("type") == "DIRECTORY":
        return path
    return posixpath.dirname(path)


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
    over = policy.caps.refusal(task, tre)
    if over:
        raise StagingRefused(over)
    for n, executor in enumerate(task.get("executors", [])):
        if not policy.image_allowed(executor["image"]):
            raise StagingRefused(f"{tre} does not allow image {executor['image']!r} (executor {n})")
        for key in executor.get("env") or {}:
            if key.upper().startswith(RESERVED_ENV):
                raise StagingRefused(f"environment variable {key!r} is reserved by {tre}; rename it")
    reserved = reserved_paths(policy, project)
    writable_paths = [
        *(_allowed(v, "volume", reserved) for v in task.get("volumes") or []),
        *(_allowed(_output_dir(o), "output path", reserved) for o in task.get("outputs") or []),
    ]
    input_paths = [_allowed(i["path"], "input path", reserved) for i in task.get("inputs") or []]
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


def collect(task: dict[str, Any], spec: RunSpec, steps_run: int) -> list[HeldFileSpec]:
    """Every file the task produced that its outputs name, plus the captured logs of each step."""
    files: list[HeldFileSpec] = []
    rw = {m.target: m.source for m in spec.mounts if not m.read_only}
    for output in task.get("outputs") or []:
        path = posixpath.normpath(output["path"])
        base = _output_dir(output)
        host_base = rw[base]
        if any(c in path for c in "*?["):
            pattern = posixpath.relpath(path, base)
            for host in sorted(p for p in host_base.rglob("*") if p.is_file() and not p.is_symlink()):
                rel = host.relative_to(host_base).as_posix()
                if fnmatch.fnmatchcase(rel, pattern):
                    files.append(
                        HeldFileSpec(
                            container_path=f"{base.rstrip('/')}/{rel}", host_path=host, kind="output"
                        )
                    )
        elif output.get("type") == "DIRECTORY":
            for host in sorted(p for p in host_base.rglob("*") if p.is_file() and not p.is_symlink()):
                rel = host.relative_to(host_base).as_posix()
                files.append(HeldFileSpec(container_path=f"{path}/{rel}", host_path=host, kind="output"))
        else:
            host = host_base / posixpath.basename(path)
            if host.is_file() and not host.is_symlink():
                files.append(HeldFileSpec(container_path=path, host_path=host, kind="output"))
    for n in range(steps_run):
        for kind in ("stdout", "stderr"):
            host = spec.logs_dir / f"step-{n}.{kind}"
            if host.is_file():
                files.append(HeldFileSpec(container_path=None, host_path=host, kind=kind, step=n))  # type: ignore[arg-type]
    return files
