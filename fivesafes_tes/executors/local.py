"""Local backend: steps as plain host processes. DEVELOPMENT ONLY — there is no sandbox at all.

It keeps the RunSpec's semantics where a plain process can: steps in order, stop at the first
failure unless ignore_error, one deadline for the whole run (the process group is killed), cancel,
captured stdout/stderr in the run's folder (and copied to a step's stdout/stderr path when given).

What it cannot do, it does simply and says so:
* no image: commands run from the host's PATH; no user switch, network, memory, CPU or pid limits;
* no mounts: the run's folders are laid out as for Docker (`hostdirs`), and a mount's target is
  rewritten to its host source wherever it appears as a path (at the
  start of an argument, or after a space, quote, `=` or `>` inside one) in the command, env values,
  workdir and stdin/stdout/stderr. `sh -c "cat /data/in > /out/x"` works; a path built at run time
  does not. Other paths are host paths.
* state lives in this process: after a restart it re-attaches to nothing (orphans keep running).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .base import BackendContext, Collected, Outcome, RunResult, RunSpec, StepResult
from .hostdirs import HostMount, Workspace, collect, lay_out

log = logging.getLogger(__name__)

WARNING = "LOCAL EXECUTOR: NOT SANDBOXED, for development only"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def mount_rewriter(mounts: list[HostMount]) -> Callable[[str], str]:
    """A function replacing container mount targets by their host sources inside a string."""
    mapping = {m.target.rstrip("/") or "/": str(m.source.resolve()) for m in mounts}
    if not mapping:
        return lambda s: s
    targets = sorted(mapping, key=len, reverse=True)  # /data/raw before /data
    pattern = re.compile(r"(?<![\w./-])(" + "|".join(map(re.escape, targets)) + r")(?![\w.-])")
    return lambda s: pattern.sub(lambda m: mapping[m.group(1)], s)


@dataclass
class _Run:
    spec: RunSpec
    workspace: Workspace
    mounts: list[HostMount]
    thread: threading.Thread | None = None
    canceled: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    proc: subprocess.Popen[bytes] | None = None
    result: RunResult | None = None


def _kill_group(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class LocalExecutor:
    """Plain subprocesses, one background thread per run. Never use it where data is sensitive."""

    name = "local"

    def __init__(
        self,
        tre: str = "local",
        *,
        deployment: str = "",
        work_dir: Path,
        datasets: Mapping[str, Path] | None = None,
    ) -> None:
        # `deployment` is the interface's; runs live in this process, so there is nothing to tell apart.
        self.tre = tre
        self.work_dir = work_dir
        self._datasets = dict(datasets or {})
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        warnings.warn(f"{WARNING}: tasks run as host processes with no isolation", stacklevel=2)
        log.warning("%s: tasks of TRE %s run as host processes with no isolation", WARNING, tre)

    @classmethod
    def from_context(cls, context: BackendContext) -> LocalExecutor:
        datasets = {name: d.path for name, d in context.datasets.items() if d.path is not None}
        return cls(context.tre, deployment=context.deployment, work_dir=context.work_dir, datasets=datasets)

    def start(self, spec: RunSpec) -> None:
        if not spec.steps:
            raise ValueError("a run needs at least one step")
        with self._lock:
            old = self._runs.get(spec.child_id)
            if old is not None and old.spec.attempt >= spec.attempt:
                return
            if old is not None:
                self._stop(old)
            workspace = Workspace(self.work_dir / spec.child_id)
            mounts = lay_out(spec, workspace, self._datasets)
            run = self._runs[spec.child_id] = _Run(spec, workspace, mounts)
            run.thread = threading.Thread(
                target=self._work, args=(run,), name=f"local-{spec.child_id}", daemon=True
            )
            run.thread.start()

    def poll(self, child_id: str) -> RunResult | None:
        run = self._runs.get(child_id)
        if run is None:
            return RunResult(Outcome.LOST, [], f"{WARNING}: this process has no record of the run")
        return run.result

    def cancel(self, child_id: str) -> RunResult | None:
        run = self._runs.get(child_id)
        if run is None:
            return None
        if run.result is None:
            self._stop(run)
            if run.thread is not None:
                run.thread.join(10)
        return run.result

    def collect(self, child_id: str, scratch: Path) -> Collected | None:
        run = self._runs.get(child_id)
        if run is None:
            return Collected()
        return collect(run.workspace, run.spec.writable, len(run.spec.steps))

    def running(self) -> dict[str, int]:
        return {cid: run.spec.attempt for cid, run in list(self._runs.items()) if run.result is None}

    def cleanup(self, child_id: str) -> None:
        with self._lock:
            run = self._runs.pop(child_id, None)
        if run is not None:
            self._stop(run)
            shutil.rmtree(run.workspace.root, ignore_errors=True)

    def sweep(self, keep: set[str]) -> list[str]:
        removed = sorted(set(self._runs) - keep)
        for child_id in removed:
            self.cleanup(child_id)
        return removed

    # ---------------------------------------------------------------------------------------------

    @staticmethod
    def _stop(run: _Run) -> None:
        with run.lock:
            run.canceled.set()
            _kill_group(run.proc)

    def _work(self, run: _Run) -> None:
        try:
            outcome, message, results = self._run_steps(run)
        except Exception as exc:  # a bug or a host error must still end the run
            log.exception("local run %s failed", run.spec.child_id)
            outcome, message, results = Outcome.FAILED, f"the local executor failed: {exc}", []
        run.result = RunResult(outcome, results, f"{WARNING}: {message}")

    def _run_steps(self, run: _Run) -> tuple[Outcome, str, list[StepResult]]:
        spec = run.spec
        deadline = time.monotonic() + spec.limits.runtime_s
        epoch_deadline = int(time.time()) + spec.limits.runtime_s
        rewrite = mount_rewriter(run.mounts)
        logs = run.workspace
        scratch = Path(tempfile.mkdtemp(prefix=f"fst-local-{spec.child_id}-"))
        results: list[StepResult] = []
        try:
            for i, step in enumerate(spec.steps):
                which = f"step {i + 1} of {len(spec.steps)}"
                if run.canceled.is_set():
                    return Outcome.CANCELED, "the run was canceled", results
                env = {
                    "PATH": os.environ.get("PATH", os.defpath),
                    "HOME": str(scratch),
                    "TMPDIR": str(scratch),
                }
                env.update({k: rewrite(v) for k, v in step.env.items()})
                env["FIVESAFES_DEADLINE"] = str(epoch_deadline)
                out_path, err_path = logs.log(i, "stdout"), logs.log(i, "stderr")
                start = _now()
                with out_path.open("wb") as out, err_path.open("wb") as err:
                    stdin = Path(rewrite(step.stdin)).open("rb") if step.stdin else None  # noqa: SIM115
                    try:
                        with run.lock:
                            if run.canceled.is_set():
                                return Outcome.CANCELED, "the run was canceled", results
                            run.proc = subprocess.Popen(
                                [rewrite(a) for a in step.command],
                                stdin=subprocess.DEVNULL if stdin is None else stdin,
                                stdout=out,
                                stderr=err,
                                cwd=rewrite(step.workdir) if step.workdir else scratch,
                                env=env,
                                start_new_session=True,
                            )
                        try:
                            code = run.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                        except subprocess.TimeoutExpired:
                            _kill_group(run.proc)
                            code = run.proc.wait()
                        _kill_group(run.proc)  # as when a container's PID 1 exits: strays go too
                    except OSError as exc:
                        err.write(f"fivesafes: {exc}\n".encode())
                        code = 127
                    finally:
                        if stdin is not None:
                            stdin.close()
                results.append(StepResult(code, start, _now()))
                for wanted, captured in ((step.stdout, out_path), (step.stderr, err_path)):
                    if wanted:
                        shutil.copyfile(captured, rewrite(wanted))
                if run.canceled.is_set():
                    return Outcome.CANCELED, "the run was canceled", results
                if time.monotonic() >= deadline and code != 0:
                    return (
                        Outcome.TIMED_OUT,
                        f"{which} was stopped: the run's time limit was reached",
                        results,
                    )
                if code != 0 and not step.ignore_error:
                    return Outcome.FAILED, f"{which} exited with code {code}", results
            return Outcome.SUCCEEDED, f"all {len(spec.steps)} step(s) succeeded", results
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
