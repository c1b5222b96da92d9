"""Docker backend: each step is one hardened container, and progress is read back from the engine.

A step's container is created only once the step before it has ended, so a run holds one live
container at a time whatever its length. `start` lays out the run's host folders (`hostdirs`: its
inputs, writable folders and logs under the backend's work directory), checks every image is there,
writes the run's plan beside its logs, then creates and starts step 0: step 0 existing means
the run exists. Names are deterministic (`fst-<child>-<attempt>-<step>`): a second start after a
crash meets 409 Conflict and re-attaches instead of running anything twice. The deadline is fixed
when the run starts and enforced inside each container by a static busybox `timeout`, so it holds
while the agent is dead. `poll` keeps no state of its own: it inspects the child's containers,
collects the logs of steps that ended, and creates and starts the next one from the plan, so a
restarted agent just polls again. Each step created leaves a mark beside the plan, so a step whose
container was removed behind our back ends the run as lost instead of running a second time.

Host requirements: a Docker engine, and a static busybox at /bin/busybox (Debian: busybox-static).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import docker
import requests
from docker.errors import APIError, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import LogConfig
from docker.types import Mount as EngineMount

from .base import (
    LABEL_ATTEMPT,
    LABEL_CHILD,
    LABEL_DEADLINE,
    LABEL_DEPLOYMENT,
    LABEL_STEP,
    LABEL_TRE,
    BackendContext,
    Collected,
    ExecutorError,
    Limits,
    Outcome,
    RunResult,
    RunSpec,
    Step,
    StepResult,
)
from .hostdirs import HostMount, Workspace, collect, lay_out
from .sandbox import (
    OOM_NOTICE,
    POLICY,
    SandboxPolicy,
    check_container_config,
    step_argv,
    step_env,
    validate_run_spec,
)

log = logging.getLogger(__name__)

LABEL_STEPS = "org.fivesafes.steps"  # how many steps the run has
LABEL_IGNORE_ERROR = "org.fivesafes.ignore-error"
LABEL_LOGS_DIR = "org.fivesafes.logs-dir"
LABEL_RUNTIME = "org.fivesafes.runtime"
LABEL_CANCELED = "org.fivesafes.canceled"  # on the never-started marker container cancel leaves

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")
_ENDED = ("exited", "dead")
_TIMEOUT_EXIT_CODES = (124, 137)  # our wrapper: no time left at start / killed by timeout -s KILL
# The cancel marker is never started; it carries the smallest limits the engine accepts.
_MARKER_LIMITS = Limits(cpu_cores=0.01, memory_bytes=8 << 20, disk_bytes=1 << 20, runtime_s=1, pids=1)


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable with no program interpreter, i.e. one that runs in any image."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF":
            return False
        end = "<" if head[5] == 1 else ">"
        if head[4] == 2:
            (phoff,) = struct.unpack_from(end + "Q", head, 0x20)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 0x36)
        else:
            (phoff,) = struct.unpack_from(end + "I", head, 0x1C)
            phentsize, phnum = struct.unpack_from(end + "HH", head, 0x2A)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    return all(struct.unpack_from(end + "I", table, i * phentsize)[0] != pt_interp for i in range(phnum))


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _rfc3339(value: datetime) -> str:
    return value.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _started(state: dict[str, Any]) -> bool:
    return _time(state.get("StartedAt") or "0001-01-01T00:00:00Z").year > 1


@dataclass
class _Run:
    """The containers of one child's latest attempt, as the engine reports them."""

    child_id: str
    attempt: int
    steps: dict[int, Container] = field(default_factory=dict)
    marker: Container | None = None

    @property
    def labels(self) -> dict[str, str]:
        first = self.steps.get(0) or next(iter(self.steps.values()), None) or self.marker
        return first.labels if first else {}

    @property
    def count(self) -> int:
        return int(self.labels.get(LABEL_STEPS, 0))

    @property
    def deadline(self) -> int:
        return int(self.labels.get(LABEL_DEADLINE, 0))

    @property
    def exists(self) -> bool:
        return self.count > 0 and 0 in self.steps

    @property
    def plan_dir(self) -> Path:
        """Of a run that exists (its step 0 carries the logs directory)."""
        return _plan_dir(Path(self.labels[LABEL_LOGS_DIR]), self.attempt)


def _plan_dir(logs_dir: Path, attempt: int) -> Path:
    """Where a run keeps its plan and the marks of the steps created: the agent's, not the task's."""
    return logs_dir / f".run-{attempt}"


@dataclass(frozen=True)
class _Plan:
    """What the steps after step 0 are created from: the spec (its inputs already placed) and the mounts."""

    spec: RunSpec
    mounts: list[HostMount]
    logs_dir: Path

    def to_json(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "child_id": spec.child_id,
            "attempt": spec.attempt,
            "tre": spec.tre,
            "user": spec.user,
            "logs_dir": str(self.logs_dir),
            "limits": dataclasses.asdict(spec.limits),
            "writable": list(spec.writable),
            "mounts": [[str(m.source), m.target, m.read_only] for m in self.mounts],
            "steps": [dataclasses.asdict(step) for step in spec.steps],
        }

    @classmethod
    def from_json(cls, plan: dict[str, Any]) -> _Plan:
        spec = RunSpec(
            child_id=plan["child_id"],
            attempt=plan["attempt"],
            tre=plan["tre"],
            user=plan["user"],
            limits=Limits(**plan["limits"]),
            writable=list(plan["writable"]),
            steps=[Step(**step) for step in plan["steps"]],
        )
        mounts = [HostMount(source=Path(s), target=t, read_only=ro) for s, t, ro in plan["mounts"]]
        return cls(spec, mounts, Path(plan["logs_dir"]))


@dataclass
class _Verdict:
    action: Literal["wait", "start", "end"]
    step: int = 0  # the step to start (action "start")
    ended: list[int] = field(default_factory=list)  # steps whose results count
    outcome: Outcome | None = None
    message: str = ""


class DockerExecutor:
    """Runs steps as sandboxed containers on one Docker engine, for one TRE.

    Everything it lists, sweeps or re-attaches is filtered by the TRE and deployment labels, so
    several agents (two TREs of `fivesafes-tes dev`, two dev stacks, two test sessions, even with the
    same TRE names) can share an engine without touching each other's work.
    """

    name = "docker"

    def __init__(
        self,
        tre: str,
        *,
        deployment: str,
        work_dir: Path,
        datasets: Mapping[str, Path] | None = None,
        client: docker.DockerClient | None = None,
        busybox: str | Path = "/bin/busybox",
        policy: SandboxPolicy = POLICY,
    ) -> None:
        if not _NAME.match(deployment):
            raise ValueError(f"deployment {deployment!r} cannot label a container (letters, digits, _.-)")
        self.tre = tre
        self.deployment = deployment
        self.work_dir = work_dir
        self._datasets = dict(datasets or {})
        self._policy = policy
        self._busybox = Path(busybox)
        if not self._busybox.is_file() or not _is_static_elf(self._busybox):
            raise ExecutorError(
                f"{self._busybox} is not a static busybox; the Docker executor mounts it into every "
                "container to enforce the deadline (Debian: apt-get install busybox-static)"
            )
        self._client = client or docker.from_env()

    @classmethod
    def from_context(cls, context: BackendContext) -> DockerExecutor:
        """Runs in folders under the agent's work directory; datasets are the policy's host paths."""
        datasets = {name: d.path for name, d in context.datasets.items() if d.path is not None}
        return cls(context.tre, deployment=context.deployment, work_dir=context.work_dir, datasets=datasets)

    def workspace(self, child_id: str) -> Workspace:
        return Workspace(self.work_dir / child_id)

    # --- the Executor interface ---------------------------------------------------------------

    def start(self, spec: RunSpec) -> None:
        validate_run_spec(spec, self._policy)
        if spec.tre != self.tre:
            raise ValueError(f"this executor runs TRE {self.tre!r}'s work, not {spec.tre!r}")
        if not _NAME.match(spec.child_id) or spec.attempt < 0:
            raise ValueError(f"child id {spec.child_id!r} / attempt {spec.attempt} cannot name a container")
        mine: _Run | None = None
        for attempt, run in self._runs(spec.child_id).get(spec.child_id, {}).items():
            if attempt > spec.attempt:
                raise ExecutorError(f"attempt {spec.attempt} is superseded by attempt {attempt} already here")
            if attempt < spec.attempt:
                self._remove(run)  # superseded: the gateway refuses its updates anyway
            else:
                mine = run
        if mine is not None and mine.marker is not None:
            return  # canceled: a late or repeated start must not revive it
        if mine is None or 0 not in mine.steps:
            # Without step 0 nothing ran, so leftovers of a crashed start go.
            if mine is not None:
                self._remove(mine)
            mine = self._create(
                spec, lay_out(spec, self.workspace(spec.child_id), self._datasets, self._policy)
            )
        self._start_step(mine.steps[0])

    def poll(self, child_id: str) -> RunResult | None:
        run = self._latest(child_id)
        if run is None:
            return RunResult(Outcome.LOST, [], "the Docker engine has no containers for this run")
        if run.marker is not None:
            self._kill(run)  # cancel may have died between the marker and the kill
            run = self._latest(child_id) or run
        verdict = self._verdict(run)
        if verdict.action == "wait":
            return None
        results = [self._collect(run, i) for i in verdict.ended]
        if verdict.action == "start":
            try:
                self._start_step(run.steps.get(verdict.step) or self._create_next(run, verdict.step))
            except ExecutorError as exc:
                return RunResult(Outcome.FAILED, results, str(exc))
            return None
        assert verdict.outcome is not None
        return RunResult(verdict.outcome, results, verdict.message)

    def cancel(self, child_id: str) -> RunResult | None:
        run = self._latest(child_id)
        if run is None:
            return None
        if run.marker is None:
            if self._verdict(run).action == "end":
                return self.poll(child_id)  # ended: its outcome stands
            self._mark_canceled(run)
        self._kill(run)
        return self.poll(child_id)

    def collect(self, child_id: str, scratch: Path) -> Collected | None:
        """The files and logs on the host, where the run left them (`scratch` is not needed)."""
        workspace = self.workspace(child_id)
        plans = sorted(workspace.logs.glob(".run-*/plan.json"), key=lambda p: int(p.parent.name[5:]))
        if not plans:
            return Collected()
        plan = _Plan.from_json(json.loads(plans[-1].read_text()))
        return collect(workspace, plan.spec.writable, len(plan.spec.steps))

    def running(self) -> dict[str, int]:
        alive = {}
        for child_id, attempts in self._runs().items():
            run = attempts[max(attempts)]
            if run.exists and self._verdict(run).action != "end":
                alive[child_id] = run.attempt
        return alive

    def cleanup(self, child_id: str) -> None:
        for container in self._list({LABEL_CHILD: child_id}):
            self._remove_container(container)
        shutil.rmtree(self.workspace(child_id).root, ignore_errors=True)

    def sweep(self, keep: set[str]) -> list[str]:
        removed = set()
        for container in self._list({}):
            child_id = container.labels.get(LABEL_CHILD, "")
            if child_id not in keep:
                self._remove_container(container)
                removed.add(child_id)
        for child_id in removed:  # another deployment's folders may share the work directory: not those
            if _NAME.match(child_id):
                shutil.rmtree(self.workspace(child_id).root, ignore_errors=True)
        if removed:
            log.info(
                "swept containers of %d orphaned run(s) of TRE %s: %s",
                len(removed),
                self.tre,
                sorted(removed),
            )
        return sorted(removed)

    # --- engine state ---------------------------------------------------------------------------

    def _list(self, labels: dict[str, str]) -> list[Container]:
        wanted = {LABEL_TRE: self.tre, LABEL_DEPLOYMENT: self.deployment, **labels}
        filters = {"label": [f"{k}={v}" for k, v in wanted.items()] + [LABEL_CHILD]}
        try:
            # The Docker SDK is untyped; containers.list returns Container objects.
            found: list[Container] = self._client.containers.list(
                all=True, filters=filters, ignore_removed=True
            )
            return found
        except APIError as exc:
            raise ExecutorError(
                f"the Docker engine could not list containers: {exc.explanation or exc}"
            ) from exc

    def _runs(self, child_id: str | None = None) -> dict[str, dict[int, _Run]]:
        """child id -> attempt -> its containers."""
        runs: dict[str, dict[int, _Run]] = {}
        for c in self._list({LABEL_CHILD: child_id} if child_id is not None else {}):
            child, attempt = c.labels[LABEL_CHILD], int(c.labels.get(LABEL_ATTEMPT, -1))
            run = runs.setdefault(child, {}).setdefault(attempt, _Run(child, attempt))
            if LABEL_CANCELED in c.labels:
                run.marker = c
            else:
                run.steps[int(c.labels[LABEL_STEP])] = c
        return runs

    def _latest(self, child_id: str) -> _Run | None:
        attempts = self._runs(child_id).get(child_id)
        return attempts[max(attempts)] if attempts else None

    def _verdict(self, run: _Run) -> _Verdict:
        """What the run needs next, from the engine's view (and the marks of steps created); it changes
        nothing."""
        lost = _Verdict(
            "end", outcome=Outcome.LOST, message="the run's containers were removed from the engine"
        )
        if not run.exists:
            if run.marker is not None and not run.steps:
                return _Verdict("end", outcome=Outcome.CANCELED, message="the run was canceled")
            return lost
        ended: list[int] = []
        for i in range(run.count):
            container = run.steps.get(i)
            if container is None:
                if run.marker is not None:
                    break  # canceled between steps: no later step was created
                if max(run.steps) > i or self._was_created(run, i):
                    return lost
                return _Verdict("start", step=i, ended=ended)
            state = container.attrs["State"]
            status = state["Status"]
            if run.marker is not None:
                if status not in _ENDED and status != "created":
                    return _Verdict("wait")
                if status in _ENDED and _started(state):
                    ended.append(i)
                continue
            if status == "created":
                return _Verdict("start", step=i, ended=ended)
            if status not in _ENDED:
                return _Verdict("wait")
            ended.append(i)
            outcome, message = self._classify(run, i, state, container)
            if outcome is not None:
                return _Verdict("end", ended=ended, outcome=outcome, message=message)
        if run.marker is not None:
            return _Verdict("end", ended=ended, outcome=Outcome.CANCELED, message="the run was canceled")
        return _Verdict(
            "end", ended=ended, outcome=Outcome.SUCCEEDED, message=f"all {run.count} step(s) succeeded"
        )

    def _classify(
        self, run: _Run, i: int, state: dict[str, Any], container: Container
    ) -> tuple[Outcome | None, str]:
        code = int(state.get("ExitCode", -1))
        if code == 0:
            return None, ""
        which = f"step {i + 1} of {run.count}"
        ignore = container.labels.get(LABEL_IGNORE_ERROR) == "true"
        if not ignore and (state.get("OOMKilled") or self._oom_noticed(container)):
            memory = container.attrs["HostConfig"].get("Memory") or 0
            return Outcome.OUT_OF_MEMORY, f"{which} ran out of memory (limit {memory >> 20} MiB)"
        if code in _TIMEOUT_EXIT_CODES and _time(state["FinishedAt"]).timestamp() >= run.deadline - 1:
            runtime = run.labels.get(LABEL_RUNTIME, "?")
            return Outcome.TIMED_OUT, f"{which} was stopped: the run's time limit of {runtime} s was reached"
        if ignore:
            return None, ""
        hint = {127: " (command not found in the image)", 137: " (killed)"}.get(code, "")
        return Outcome.FAILED, f"{which} exited with code {code}{hint}"

    def _oom_noticed(self, container: Container) -> bool:
        last: bytes = self._client.api.logs(container.id, stdout=False, stderr=True, tail=1)
        return last.decode(errors="replace").strip() == OOM_NOTICE

    # --- actions --------------------------------------------------------------------------------

    def _create(self, spec: RunSpec, mounts: list[HostMount]) -> _Run:
        """Step 0 of a new run, once every image it needs is here (a missing one fails the start, not a
        later step) and its plan is written for the steps after it."""
        deadline = int(time.time()) + spec.limits.runtime_s
        for image in dict.fromkeys(step.image for step in spec.steps):
            self._ensure_image(image)
        plan = _Plan(spec, mounts, self.workspace(spec.child_id).logs.resolve())
        folder = _plan_dir(plan.logs_dir, spec.attempt)
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / "plan.json.part"
        part.write_text(json.dumps(plan.to_json()))
        part.replace(folder / "plan.json")
        return _Run(spec.child_id, spec.attempt, steps={0: self._create_step(plan, 0, deadline)})

    def _create_next(self, run: _Run, i: int) -> Container:
        """Step i's container, from the plan `start` wrote; the deadline stays the run's."""
        try:
            plan = _Plan.from_json(json.loads((run.plan_dir / "plan.json").read_text()))
        except (OSError, TypeError, ValueError, KeyError) as exc:
            raise ExecutorError(
                f"step {i + 1} could not be created: the run's plan is missing from the agent's work "
                f"directory ({exc})"
            ) from exc
        return self._create_step(plan, i, run.deadline)

    def _create_step(self, plan: _Plan, i: int, deadline: int) -> Container:
        container = self._create_container(self._step_config(plan, i, deadline))
        (_plan_dir(plan.logs_dir, plan.spec.attempt) / f"step-{i}.created").touch()
        return container

    def _was_created(self, run: _Run, i: int) -> bool:
        return (run.plan_dir / f"step-{i}.created").exists()

    def _ensure_image(self, image: str) -> None:
        try:
            self._client.images.get(image)
        except ImageNotFound:
            self._pull(image)
        except APIError as exc:
            raise ExecutorError(
                f"the Docker engine could not look up image {image}: {exc.explanation or exc}"
            ) from exc

    def _create_container(self, config: dict[str, Any]) -> Container:
        try:
            try:
                container = self._client.containers.create(**config)
            except ImageNotFound:
                self._pull(config["image"])
                container = self._client.containers.create(**config)
        except APIError as exc:
            if exc.status_code != 409:
                raise ExecutorError(
                    f"the Docker engine refused the container: {exc.explanation or exc}"
                ) from exc
            container = self._client.containers.get(config["name"])  # made by an earlier, interrupted start
        try:
            check_container_config(container.attrs, self._policy)
        except AssertionError:
            self._remove_container(container)
            raise
        return container

    def _pull(self, image: str) -> None:
        log.info("pulling image %s", image)
        try:
            self._client.images.pull(image)
        except APIError as exc:
            raise ExecutorError(
                f"image {image} is not on this TRE's engine and could not be pulled: {exc}"
            ) from exc

    def _sandbox_config(self, user: str, limits: Limits) -> dict[str, Any]:
        """Everything the sandbox policy fixes, whatever the step."""
        p = self._policy
        return {
            "user": user,
            "network_mode": p.network,
            "cap_drop": list(p.drop_capabilities),
            "security_opt": ["no-new-privileges:true"] if p.no_new_privileges else [],
            "privileged": False,
            "read_only": p.read_only_root,
            "tmpfs": {p.writable_tmp: f"rw,nosuid,nodev,size={limits.disk_bytes},mode=1777"},
            "mem_limit": limits.memory_bytes,
            "memswap_limit": limits.memory_bytes,
            "nano_cpus": max(1, int(limits.cpu_cores * 1e9)),
            "pids_limit": limits.pids,
            "ipc_mode": p.ipc,
            "cgroupns": "private",
            "restart_policy": {"Name": "no"},
            "log_config": LogConfig(
                type="json-file", config={"max-size": str(p.log_max_bytes // 2), "max-file": "2"}
            ),
            "stdin_open": False,
            "tty": False,
        }

    def _tools_mount(self) -> EngineMount:
        return EngineMount(
            f"{self._policy.tools_dir}/busybox", str(self._busybox), type="bind", read_only=True
        )

    def _step_config(self, plan: _Plan, i: int, deadline: int) -> dict[str, Any]:
        spec = plan.spec
        step = spec.steps[i]
        entrypoint, command = step_argv(step, deadline, self._policy)
        reserved = {f"{self._policy.reserved_env_prefix}DEADLINE": str(deadline)}
        mounts = [
            EngineMount(m.target, str(m.source.resolve()), type="bind", read_only=m.read_only)
            for m in plan.mounts
        ]
        return {
            **self._sandbox_config(spec.user, spec.limits),
            "image": step.image,
            "name": f"fst-{spec.child_id}-{spec.attempt}-{i}",
            "entrypoint": entrypoint,
            "command": command,
            "environment": step_env(step.env, reserved, self._policy),
            "working_dir": step.workdir,
            "mounts": [self._tools_mount(), *mounts],
            "labels": {
                LABEL_CHILD: spec.child_id,
                LABEL_ATTEMPT: str(spec.attempt),
                LABEL_TRE: spec.tre,
                LABEL_DEPLOYMENT: self.deployment,
                LABEL_STEP: str(i),
                LABEL_STEPS: str(len(spec.steps)),
                LABEL_DEADLINE: str(deadline),
                LABEL_RUNTIME: str(spec.limits.runtime_s),
                LABEL_IGNORE_ERROR: "true" if step.ignore_error else "false",
                LABEL_LOGS_DIR: str(plan.logs_dir),
            },
        }

    def _mark_canceled(self, run: _Run) -> None:
        """Record the cancel in the engine (labels cannot change), so a restarted agent still sees it."""
        first = run.steps[min(run.steps)]
        config = {
            **self._sandbox_config(first.attrs["Config"]["User"], _MARKER_LIMITS),
            "image": first.attrs["Image"],
            "name": f"fst-{run.child_id}-{run.attempt}-canceled",
            "entrypoint": [f"{self._policy.tools_dir}/busybox"],
            "command": ["true"],
            "mounts": [self._tools_mount()],
            "labels": {
                LABEL_CHILD: run.child_id,
                LABEL_ATTEMPT: str(run.attempt),
                LABEL_TRE: self.tre,
                LABEL_DEPLOYMENT: self.deployment,
                LABEL_CANCELED: "true",
            },
        }
        run.marker = self._create_container(config)

    def _start_step(self, container: Container) -> None:
        container.reload()
        if container.status != "created":
            return  # started before: never run a step twice
        try:
            container.start()
        except APIError as exc:
            step = int(container.labels[LABEL_STEP]) + 1
            raise ExecutorError(f"step {step} could not be started: {exc.explanation or exc}") from exc

    def _kill(self, run: _Run) -> None:
        for container in run.steps.values():
            if container.status in _ENDED or container.status == "created":
                continue
            try:
                container.kill()
                container.wait(timeout=10)
            except NotFound:
                pass
            except APIError as exc:
                if exc.status_code != 409:  # 409: it stopped on its own meanwhile
                    raise
            except requests.RequestException as exc:  # wait timed out: the next poll or cancel tries again
                log.warning("container %s did not stop after kill: %s", container.name, exc)

    def _collect(self, run: _Run, i: int) -> StepResult:
        """Stream one ended step's logs to files (once; a crash mid-way leaves only a .part)."""
        container = run.steps[i]
        logs_dir = Path(container.labels[LABEL_LOGS_DIR])
        logs_dir.mkdir(parents=True, exist_ok=True)
        for stream in ("stdout", "stderr"):
            path = logs_dir / f"step-{i}.{stream}"
            if path.exists():
                continue
            part = path.with_name(path.name + ".part")
            chunks = self._client.api.logs(
                container.id, stdout=stream == "stdout", stderr=stream == "stderr", stream=True, follow=False
            )
            with part.open("wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            part.replace(path)
        state = container.attrs["State"]
        # The engine stamps StartedAt after the process began, so a quick step can "end" before it.
        started, finished = _time(state["StartedAt"]), _time(state["FinishedAt"])
        return StepResult(
            exit_code=int(state["ExitCode"]),
            start_time=_rfc3339(started),
            end_time=_rfc3339(max(started, finished)),
        )

    def _remove(self, run: _Run) -> None:
        for container in [*run.steps.values(), *([run.marker] if run.marker else [])]:
            self._remove_container(container)

    def _remove_container(self, container: Container) -> None:
        try:
            container.remove(force=True, v=True)
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code != 409:  # 409: removal already in progress
                raise
