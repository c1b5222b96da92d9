"""The one interface every executor backend implements, and the sandbox they all apply.

The agent turns a leased TES task into a `RunSpec`: inputs, writable folders and datasets by their
container paths, limits already capped by the TRE's policy. A backend places them (host folders for
Docker, a per-child claim filled and emptied by our filer for Kubernetes, a remote TES server's own
storage for the relay), runs the steps, reports on them, stops them, hands back what the run left
(`collect`), and finds what it started before a restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

LABEL_CHILD = "org.fivesafes.child"
LABEL_ATTEMPT = "org.fivesafes.attempt"
LABEL_TRE = "org.fivesafes.tre"
LABEL_STEP = "org.fivesafes.step"
LABEL_DEADLINE = "org.fivesafes.deadline"  # absolute epoch seconds the whole run must end by
LABEL_DEPLOYMENT = "org.fivesafes.deployment"  # the agent's own id: TRE names repeat across stacks


class RequestRefused(ValueError):
    """This TRE will not run the task as requested (a reserved mount target, a reserved variable): no
    retry can change that. The message depends only on the request and says what to change, so it
    may reach the researcher."""


class ExecutorError(RuntimeError):
    """A run could not be started for a reason the engine gave (image missing, engine refused).
    The message is plain language, fit for the child's system_logs."""


@dataclass(frozen=True)
class InputFile:
    """A literal input: `content` is written read-only at `target` before the first step. An input
    inside a writable folder is a file in it (the task may replace it); elsewhere it is its own mount."""

    target: str
    content: bytes


@dataclass(frozen=True)
class DatasetMount:
    """A dataset the TRE's policy grants the task's project, read-only at `target`. The backend resolves
    `name` from its own configuration: a host folder (Docker), a PersistentVolumeClaim (Kubernetes), a
    URL its TES server reads inside the TRE (relay)."""

    name: str
    target: str


@dataclass(frozen=True)
class Limits:
    """Caps already reduced to min(request, TRE maximum) by the agent."""

    cpu_cores: float = 1.0
    memory_bytes: int = 1 << 30
    disk_bytes: int = 1 << 30  # size of the writable /tmp; outputs live on mounts the agent sized
    runtime_s: int = 3600  # whole task, enforced by the engine even if the agent dies
    pids: int = 256


@dataclass(frozen=True)
class Step:
    """One tesExecutor: run in order, stopping at the first failure unless ignore_error."""

    image: str
    command: list[str]
    workdir: str | None = None
    stdin: str | None = None  # container path
    stdout: str | None = None  # container path the captured stdout is also written to
    stderr: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    ignore_error: bool = False


@dataclass(frozen=True)
class RunSpec:
    """A run as the TRE allows it, with nothing of the agent's file system in it: the backend decides
    where inputs, writable folders and datasets live (host folders, a per-child claim, a remote store)."""

    child_id: str
    attempt: int
    tre: str
    steps: list[Step]
    limits: Limits
    inputs: list[InputFile] = field(default_factory=list)
    writable: list[str] = field(default_factory=list)  # container folders, empty at start: outputs, volumes
    datasets: list[DatasetMount] = field(default_factory=list)
    user: str = "65534:65534"  # uid:gid inside the container; never root


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a step exited non-zero (and did not ignore errors)
    TIMED_OUT = "timed_out"
    OUT_OF_MEMORY = "out_of_memory"
    CANCELED = "canceled"
    LOST = "lost"  # the engine no longer knows it (removed behind our back)


@dataclass
class StepResult:
    exit_code: int
    start_time: str  # RFC 3339
    end_time: str


@dataclass
class RunResult:
    outcome: Outcome
    steps: list[StepResult]
    message: str = ""  # plain language, for system_logs


@dataclass
class Collected:
    """What an ended run left, as files the agent may read: each regular file below a writable folder
    by its container path (symbolic links are never collected), and each step's captured logs by
    (step index, "stdout" | "stderr"). The agent keeps only what the task's outputs claim, hashes it and
    holds it in the airlock, then calls `cleanup`."""

    files: dict[str, Path] = field(default_factory=dict)
    logs: dict[tuple[int, str], Path] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendContext:
    """What the agent gives a backend it creates (`from_context`): whom it runs for, a folder of the
    agent's own, the datasets the TRE's policy defines (name -> its source, with `.path`, `.claim` and
    `.url`, each None where not given), the airlock store, the agent's settings and its database."""

    tre: str
    deployment: str
    work_dir: Path
    datasets: Mapping[str, Any] = field(default_factory=dict)
    store: Any = None  # ObjectStore: the airlock (its staging area, for backends that stage through it)
    settings: Any = None  # AgentSettings
    db: Any = None  # the agent's Database (migrated), for a backend's own state: the relay's remote ids


class Executor(Protocol):
    """A backend. Every method is idempotent: the agent may call it again after a crash."""

    name: str

    def start(self, spec: RunSpec) -> None:
        """Begin running spec's steps in the background; a no-op if this child+attempt already runs.

        Raises RequestRefused for a request the sandbox refuses (the message names the fix),
        ValueError for a spec the TRE's own configuration breaks, and ExecutorError when the engine
        cannot run it. A newer attempt replaces an older one."""

    def poll(self, child_id: str) -> RunResult | None:
        """None while still running; the result once every step has ended (or the run was stopped)."""

    def cancel(self, child_id: str) -> RunResult | None:
        """Stop the run now (kill) and return how it ended: CANCELED with the steps that began, or the
        outcome it had already reached; None if it never started. `poll` afterwards says the same."""

    def collect(self, child_id: str, scratch: Path) -> Collected | None:
        """Once `poll` (or `cancel`) gave a result: the files and logs the run left. None while the
        backend is still gathering them (Kubernetes runs a stage-out Job); the agent asks again on its
        next tick. `scratch` is an empty folder of the agent's own, never mounted into a task, which
        the backend may fill; what it returns stays readable until `cleanup`."""

    def running(self) -> dict[str, int]:
        """child id -> attempt of every run this backend started and that is still alive (re-attach)."""

    def cleanup(self, child_id: str) -> None:
        """Remove every container/volume of the child (after its result was collected)."""

    def sweep(self, keep: set[str]) -> list[str]:
        """Remove everything labelled by us whose child is not in `keep`; return the child ids removed."""
