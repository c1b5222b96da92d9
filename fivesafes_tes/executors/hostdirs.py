"""Host folders standing for a run's container paths: how the Docker and local backends place a run's
inputs, writable folders and datasets, and read back what it left.

A run's folder is `<work_dir>/<child>`; where anything is in it follows from the container path alone,
so reading it back after a restart needs nothing else. The folder is the backend's own: the agent sees
only the paths `collect` hands it, and never builds one.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .base import Collected, RunSpec
from .sandbox import POLICY, SandboxPolicy, check_host_sources

STREAMS = ("stdout", "stderr")


@dataclass(frozen=True)
class HostMount:
    """A host path made visible inside the container."""

    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class Workspace:
    """A run's folder on the host: its logs, its inputs, and one folder per writable container path."""

    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def host_dir(self, container_path: str) -> Path:
        """The host folder standing for writable `container_path`; flattened, never joined raw."""
        safe = container_path.strip("/").replace("/", "__") or "_root"
        return self.root / "rw" / safe

    def log(self, step: int, stream: str) -> Path:
        return self.logs / f"step-{step}.{stream}"


def _inside(path: str, folder: str) -> bool:
    return PurePosixPath(folder) in PurePosixPath(path).parents


def lay_out(
    spec: RunSpec,
    workspace: Workspace,
    datasets: Mapping[str, Path],
    policy: SandboxPolicy = POLICY,
) -> list[HostMount]:
    """Make the run's folders from a clean slate and return what to mount: the datasets read-only from
    the TRE's folders, each writable folder, and each input not inside one (an input inside a writable
    folder is copied into it). ValueError when the TRE's configuration cannot serve the spec."""
    mounts: list[HostMount] = []
    for dataset in spec.datasets:
        source = datasets.get(dataset.name)
        if source is None:
            raise ValueError(f"dataset {dataset.name}: the TRE's policy gives it no host path (`path`)")
        mounts.append(HostMount(source, dataset.target, read_only=True))
    check_host_sources([(m.source, m.target) for m in mounts], policy)
    if workspace.root.exists():  # a retry after a crash starts from a clean slate
        shutil.rmtree(workspace.root)
    workspace.logs.mkdir(parents=True)
    writable: dict[str, Path] = {}
    for target in spec.writable:
        if target not in writable:
            writable[target] = workspace.host_dir(target)
            writable[target].mkdir(parents=True)
    mounts += [HostMount(writable[t], t, read_only=False) for t in sorted(writable)]
    for n, item in enumerate(spec.inputs):
        inside = next((w for w in writable if _inside(item.target, w)), None)
        if inside is not None:
            host = writable[inside] / posixpath.relpath(item.target, inside)
            host.parent.mkdir(parents=True, exist_ok=True)
            host.write_bytes(item.content)
            continue
        host = workspace.root / "inputs" / str(n) / posixpath.basename(item.target)
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(item.content)
        host.chmod(0o444)
        mounts.append(HostMount(host, item.target, read_only=True))
    open_for(spec.user, [workspace.root, *writable.values()])
    return mounts


def open_for(run_as: str, paths: list[Path]) -> None:
    """Let the task's unprivileged uid write in its writable folders, and nothing else of ours."""
    uid, _, gid = run_as.partition(":")
    for path in paths:
        for current in [path, *path.rglob("*")] if path.is_dir() else [path]:
            if current.is_dir():
                try:
                    os.chown(current, int(uid), int(gid or uid))
                except PermissionError:
                    current.chmod(0o777)


def collect(workspace: Workspace, writable: list[str], steps: int) -> Collected:
    """Every regular file below the writable folders (symbolic links are never followed or collected)
    and each step's captured logs, as they are on the host."""
    collected = Collected()
    for folder in writable:
        host_folder = workspace.host_dir(folder)
        for host in sorted(p for p in host_folder.rglob("*") if p.is_file() and not p.is_symlink()):
            path = f"{folder.rstrip('/')}/{host.relative_to(host_folder).as_posix()}"
            collected.files.setdefault(path, host)
    for n in range(steps):
        for stream in STREAMS:
            host = workspace.log(n, stream)
            if host.is_file():
                collected.logs[(n, stream)] = host
    return collected
