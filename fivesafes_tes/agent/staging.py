"""Turn a leased TES task into a sandbox run: a workspace on the host, the mounts the container
sees, and afterwards the files it wrote. Inputs come from allowed sources only."""

from __future__ import annotations

import fnmatch
import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fivesafes_tes.agent.policy import TrePolicy
from fivesafes_tes.egress.airlock import HeldFileSpec
from fivesafes_tes.executors import Limits, Mount, RunSpec, Step
from fivesafes_tes.executors.sandbox import POLICY as SANDBOX
from fivesafes_tes.tes.admission import Admission, PublishedCaps

DATA_ROOT = "/data"
RESERVED_ENV = ("FIVESAFES_", "DOCKER_", "KUBERNETES_", "AWS_")
INPUT_URL_SCHEMES: tuple[str, ...] = ()  # inputs come as literal content, or as granted datasets


class StagingRefused(ValueError):
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


def reserved_paths(policy: TrePolicy, project: str | None) -> list[str]:
    """Container paths at or under which no input, output or volume of a task of `project` (None: of
    a project granted no dataset) may be: where this TRE mounts datasets, and the sandbox's own."""
    return sorted({DATA_ROOT, *SANDBOX.reserved_targets})


def admission(policy: TrePolicy, tre: str) -> Admission:
    """What this TRE tells the gateway it will run. `prepare` checks every task against this same
    document, so a refusal at the gateway is word for word the one this TRE would give."""
    everyone = reserved_paths(policy, None)
    caps = policy.caps
    return Admission(
        tre=tre,
        allowed_images=list(policy.allowed_images),
        input_url_schemes=list(INPUT_URL_SCHEMES),
        reserved_paths=everyone,
        project_reserved_paths={
            project: more
            for project in sorted(policy.grants)
            if (more := sorted(set(reserved_paths(policy, project)) - set(everyone)))
        },
        reserved_env_prefixes=list(RESERVED_ENV),
        caps=PublishedCaps(
            executors=caps.executors,
            inputs=caps.inputs,
            outputs=caps.outputs,
            volumes=caps.volumes,
            env_vars=caps.env_vars,
        ),
    )


def _normal(path: str, what: str) -> str:
    normal = posixpath.normpath(path)
    if not path.startswith("/") or normal in ("/", "/.") or ".." in path.split("/"):
        raise StagingRefused(f"{what} {path!r} must be an absolute path without '..'")
    if normal == DATA_ROOT or normal.startswith(DATA_ROOT + "/"):
        raise StagingRefused(f"{what} {path!r} is under {DATA_ROOT}, where this TRE mounts datasets")
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
    refused = admission(policy, tre).refusal(task, project)
    if refused:
        raise StagingRefused(refused)
    workspace = Workspace(root)
    if root.exists():  # a retry after a crash starts from a clean slate
        shutil.rmtree(root)
    workspace.logs.mkdir(parents=True)
    mounts: list[Mount] = []
    for name, dataset in policy.datasets_for(project).items():
        mounts.append(Mount(source=dataset.path, target=f"{DATA_ROOT}/{name}", read_only=True))
    writable: dict[str, Path] = {}
    for path in [*(task.get("volumes") or []), *(_output_dir(o) for o in task.get("outputs") or [])]:
        target = _normal(path, "output or volume path")
        if target not in writable:
            writable[target] = workspace.host_dir("rw", target)
            writable[target].mkdir(parents=True)
    for target in sorted(writable):
        mounts.append(Mount(source=writable[target], target=target, read_only=False))
    for n, item in enumerate(task.get("inputs") or []):
        target = _normal(item["path"], "input path")
        if item.get("content") is None:
            raise StagingRefused(
                f"input {n} ({target}) comes from {item.get('url')!r}; {tre} stages only literal content and "
                f"the datasets granted to the project (mounted under {DATA_ROOT})"
            )
        host = workspace.root / "inputs" / str(n) / posixpath.basename(target)
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_text(item["content"])
        host.chmod(0o444)
        inside = next((w for w in writable if target.startswith(w + "/")), None)
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
