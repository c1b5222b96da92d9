"""The one interface every executor backend implements, and the sandbox they all apply.

The agent turns a leased TES task into a `RunSpec`: host directories already staged, container
paths mapped, limits already capped by the TRE's policy. A backend only runs it, reports on it,
stops it, and finds what it started before a restart (by the labels it put on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

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
class Mount:
    """A host path made visible inside the container. Inputs and datasets are read-only."""

    source: Path
    target: str
    read_only: bool = True


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
    child_id: str
    attempt: int
    tre: str
    steps: list[Step]
    mounts: list[Mount]
    limits: Limits
    logs_dir: Path  # host directory; the backend writes step-N.stdout / step-N.stderr here
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
    stdout_path: Path
    stderr_path: Path


@dataclass
class RunResult:
    outcome: Outcome
    steps: list[StepResult]
    message: str = ""  # plain language, for system_logs


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

    def cancel(self, child_id: str) -> None:
        """Stop the run now (kill), keeping logs; a no-op if it has ended or never started."""

    def running(self) -> dict[str, int]:
        """child id -> attempt of every run this backend started and that is still alive (re-attach)."""

    def cleanup(self, child_id: str) -> None:
        """Remove every container/volume of the child (after its result was collected)."""

    def sweep(self, keep: set[str]) -> list[str]:
        """Remove everything labelled by us whose child is not in `keep`; return the child ids removed."""
