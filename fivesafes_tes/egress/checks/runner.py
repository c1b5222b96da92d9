"""Running the rules on held files so that nothing is released while a check cannot run.

Each rule runs in a separate check process (forkserver where available, so a process costs a fork,
not an interpreter start) with a hard wall-clock limit. A worker checks one file at a time, rule
after rule; when a rule hangs the worker is killed and a fresh one carries on with the rest. A rule
that raises, exits, is killed, runs out of memory or returns something that is not a proper
`RuleResult` gets a FAIL result with `error` set.

Results cross back as JSON, never pickle, and errors carry the exception's type and where it was
raised, never its message: messages and tracebacks may quote file contents, which must not reach
logs (RELIABILITY 28). For the same reason a check process's stdout and stderr go to /dev/null and
it dumps no core.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from fivesafes_tes.egress.checks.base import CheckContext, Finding, RuleResult, Verdict
from fivesafes_tes.egress.checks.config import ChecksConfig
from fivesafes_tes.egress.held import HeldFile

log = logging.getLogger(__name__)

MAX_FINDINGS = 500  # per rule and file: enough for a person, bounded for the disclosure record
_STOP = b""
_JOIN_S = 5.0
_context_lock = threading.Lock()
# The two start methods used; typeshed gives BaseContext no Process, so name them.
_Context = multiprocessing.context.ForkServerContext | multiprocessing.context.SpawnContext
_mp_context: _Context | None = None


@dataclass
class FileReport:
    file: HeldFile
    results: list[RuleResult]
    verdict: Verdict  # the worst of the results; REVIEW when no rule is enabled


@dataclass(frozen=True)
class _Sandbox:
    """What a check process is held to: its address space, its threads, no network, and no file
    but those it judges."""

    memory_bytes: int | None
    threads: int
    deny_network: bool
    confine_files: bool


@dataclass(frozen=True)
class _Planned:
    name: str
    spec: str  # "module:Class", resolved in the parent so the worker needs no registry
    config: dict[str, Any]
    timeout_s: float
    never_release: bool  # the TRE never releases a file this rule fails


def run_checks(files: list[HeldFile], config: ChecksConfig, project: str) -> list[FileReport]:
    """Every enabled rule on every file (one report per file, in order), under `project`'s config."""
    if not files:
        return []
    effective = config.for_project(project)
    plan = tuple(_plan(name, effective) for name in effective.enabled)
    if not plan:
        return [FileReport(file, [], Verdict.REVIEW) for file in files]
    context = CheckContext(files=tuple(files), project=project)
    reports: list[FileReport | None] = [None] * len(files)
    pending: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(files)):
        pending.put(index)

    def slot() -> None:
        worker = _Worker(
            context,
            plan,
            _Sandbox(
                memory_bytes=effective.worker_memory_bytes,
                threads=effective.threads,
                deny_network=effective.deny_network,
                confine_files=effective.confine_files,
            ),
        )
        try:
            while True:
                try:
                    index = pending.get_nowait()
                except queue.Empty:
                    return
                results = [worker.run(index, step) for step in range(len(plan))]
                reports[index] = FileReport(
                    files[index], results, Verdict.worst([r.verdict for r in results])
                )
        except Exception:
            log.exception("check runner slot failed; its files fail closed")
        finally:
            worker.close()

    threads = [
        threading.Thread(target=slot, name=f"checks-{n}", daemon=True)
        for n in range(min(effective.workers, len(files)))
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = [
        report or _failed_report(files[index], plan, "the check runner stopped before this file was checked")
        for index, report in enumerate(reports)
    ]
    tally = {v: sum(1 for r in done if r.verdict is v) for v in Verdict}
    log.info(
        "checked %d files of project %s with %s in %.1fs: %d pass, %d review, %d fail",
        len(done),
        project,
        ", ".join(p.name for p in plan),
        time.monotonic() - started,
        tally[Verdict.PASS],
        tally[Verdict.REVIEW],
        tally[Verdict.FAIL],
    )
    return done


def _plan(name: str, config: ChecksConfig) -> _Planned:
    from fivesafes_tes.egress.checks import RULES

    return _Planned(
        name,
        RULES.get(name, ""),
        config.rule_config(name),
        config.timeout_for(name),
        config.never_release_for(name),
    )


def _failed_report(file: HeldFile, plan: tuple[_Planned, ...], why: str) -> FileReport:
    return FileReport(file, [_failed(p.name, why, file) for p in plan], Verdict.FAIL)


def _failed(
    rule: str, why: str, file: HeldFile, version: str = "unknown", seconds: float = 0.0
) -> RuleResult:
    message = f"rule {rule} could not judge {file.name}: {why}; the file is held until the check can run"
    return RuleResult(
        rule=rule,
        version=version,
        verdict=Verdict.FAIL,
        findings=[Finding(Verdict.FAIL, message)],
        error=why,
        seconds=seconds,
    )


def prewarm() -> None:
    """Start the fork server now (it imports the rules while the agent starts), so that the first
    hold's check processes start as warm as every later one's."""
    ctx = _mp()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _preload() -> list[str]:
    """What the fork server imports once, so that a check process forked from it starts warm: the
    runner, the built-in rules (with pyarrow), Arrow's first-call set-up (`_warm`), and the main
    module when it is ours (`python -m fivesafes_tes.cli agent`): each child re-runs its main
    module, which then costs no imports."""
    from fivesafes_tes.egress.checks import RULES

    rules = dict.fromkeys(spec.partition(":")[0] for spec in RULES.values())
    modules = [__name__, *rules, "fivesafes_tes.egress.checks._warm"]
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name.startswith("fivesafes_tes."):
        modules.append(spec.name)
    return modules


def _mp() -> _Context:
    global _mp_context
    with _context_lock:
        if _mp_context is None:
            if "forkserver" in multiprocessing.get_all_start_methods():
                forkserver = multiprocessing.get_context("forkserver")
                forkserver.set_forkserver_preload(_preload())
                _mp_context = forkserver
            else:
                _mp_context = multiprocessing.get_context("spawn")
        return _mp_context


class _Worker:
    """One check process, restarted whenever it had to be killed or died."""

    def __init__(self, context: CheckContext, plan: tuple[_Planned, ...], sandbox: _Sandbox) -> None:
        self._context = context
        self._plan = plan
        self._sandbox = sandbox
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None

    def run(self, file_index: int, step: int) -> RuleResult:
        planned = self._plan[step]
        file = self._context.files[file_index]
        started = time.monotonic()
        try:
            conn = self._ensure_started()
        except Exception as exc:  # noqa: BLE001 - cannot start a check process: fail closed, say why
            why = f"no check process could be started ({type(exc).__name__})"
            return self._log_failure(planned, file, why, 0.0)
        try:
            conn.send_bytes(json.dumps({"file": file_index, "step": step}).encode())
            if not conn.poll(planned.timeout_s):
                self._kill()
                why = f"timed out: no verdict within timeout_s={planned.timeout_s:g}"
                return self._log_failure(planned, file, why, time.monotonic() - started)
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            why = f"the check process died ({self._exit_description()})"
            return self._log_failure(planned, file, why, time.monotonic() - started)
        seconds = time.monotonic() - started
        try:
            reply = json.loads(raw)
            if "error" in reply:
                version = reply.get("version")
                return self._log_failure(
                    planned, file, str(reply["error"]), seconds, version if isinstance(version, str) else None
                )
            result = _parse_result(planned.name, reply["result"])
        except (ValueError, KeyError, TypeError) as exc:
            return self._log_failure(planned, file, f"returned nonsense: {exc}", seconds)
        result.seconds = seconds
        if planned.never_release:
            _mark_never_release(result, file)
        log.debug(
            "rule %s v%s on %s: %s (%.2fs)", result.rule, result.version, file.name, result.verdict, seconds
        )
        return result

    def close(self) -> None:
        if self._conn is not None and self._process is not None and self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send_bytes(_STOP)
            self._process.join(_JOIN_S)
        self._kill()

    def _ensure_started(self) -> Connection:
        if self._process is not None and self._process.is_alive() and self._conn is not None:
            return self._conn
        self._kill()
        ctx = _mp()
        parent, child = ctx.Pipe(duplex=True)
        specs = [(p.spec, p.config) for p in self._plan]
        process = ctx.Process(
            target=_worker_main,
            args=(child, self._context, specs, self._sandbox),
            name="fivesafes-check",
            daemon=True,
        )
        process.start()
        child.close()
        self._process, self._conn = process, parent
        return parent

    def _kill(self) -> None:
        process, conn = self._process, self._conn
        if process is not None:
            if process.is_alive() and process.pid is not None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # the rule's own children too
                except OSError:
                    process.kill()
            process.join(_JOIN_S)
        if conn is not None:
            conn.close()
        self._process = self._conn = None

    def _exit_description(self) -> str:
        process = self._process
        if process is not None:
            process.join(_JOIN_S)
        code = process.exitcode if process is not None else None
        self._kill()
        if code is None:
            return "no exit status"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    @staticmethod
    def _log_failure(
        planned: _Planned, file: HeldFile, why: str, seconds: float, version: str | None = None
    ) -> RuleResult:
        log.warning("rule %s failed closed on %s: %s", planned.name, file.name, why)
        return _failed(planned.name, why, file, version=version or "unknown", seconds=seconds)


def _mark_never_release(result: RuleResult, file: HeldFile) -> None:
    """The TRE never releases what this rule fails: every failing finding says so, and a failure
    without one gets one."""
    if result.verdict is not Verdict.FAIL:
        return
    failing = [f for f in result.findings if f.verdict is Verdict.FAIL]
    result.findings = [
        dataclasses.replace(f, never_release=True) if f.verdict is Verdict.FAIL else f
        for f in result.findings
    ]
    if not failing:
        result.findings.append(
            Finding(Verdict.FAIL, f"rule {result.rule} failed {file.name}", never_release=True)
        )


def _parse_result(expected_rule: str, data: dict[str, Any]) -> RuleResult:
    """A RuleResult from the worker's JSON, refusing anything that is not one (ValueError says why)."""
    if data.get("rule") != expected_rule:
        raise ValueError(f"result names rule {data.get('rule')!r}, not {expected_rule!r}")
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise ValueError("result has no version")
    verdict = _verdict(data.get("verdict"))
    raw_findings = data.get("findings")
    if not isinstance(raw_findings, list):
        raise TypeError("findings is not a list")
    findings = [_finding(item) for item in raw_findings]
    error = data.get("error")
    if error is not None and not isinstance(error, str):
        raise ValueError("error is not text")
    if error is not None:
        verdict = Verdict.FAIL  # a rule reporting its own error has not judged the file
    verdict = Verdict.worst([verdict, *(f.verdict for f in findings)])
    if len(findings) > MAX_FINDINGS:
        rest = findings[MAX_FINDINGS:]
        findings = [
            *findings[:MAX_FINDINGS],
            Finding(
                Verdict.worst([f.verdict for f in rest]),
                f"rule {expected_rule}: {len(rest)} more findings not shown",
                never_release=any(f.never_release for f in rest),
            ),
        ]
    return RuleResult(rule=expected_rule, version=version, verdict=verdict, findings=findings, error=error)


def _verdict(value: Any) -> Verdict:
    try:
        return Verdict(value)
    except ValueError:
        raise ValueError(f"unknown verdict {str(value)[:20]!r}") from None


def _finding(item: Any) -> Finding:
    if not isinstance(item, dict):
        raise TypeError("a finding is not a Finding")
    message = item.get("message")
    if not isinstance(message, str) or not message:
        raise ValueError("a finding has no message")
    row = item.get("row")
    if row is not None and (not isinstance(row, int) or isinstance(row, bool)):
        raise ValueError("a finding's row is not a number")
    texts = {key: item.get(key) for key in ("column", "excerpt", "threshold")}
    for key, value in texts.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"a finding's {key} is not text")
    never_release = item.get("never_release", False)
    if not isinstance(never_release, bool):
        raise TypeError("a finding's never_release is not true or false")
    return Finding(_verdict(item.get("verdict")), message, row=row, never_release=never_release, **texts)


# --- inside the check process -------------------------------------------------------------------


def _worker_main(
    conn: Connection, context: CheckContext, specs: list[tuple[str, dict[str, Any]]], sandbox: _Sandbox
) -> None:
    from fivesafes_tes.egress.checks._parallel import set_threads

    _isolate(sandbox.memory_bytes)
    set_threads(sandbox.threads)
    refused = None  # why this process may judge nothing
    if sandbox.deny_network:
        from fivesafes_tes.egress.checks._seccomp import deny_network

        try:
            deny_network()
        except (OSError, NotImplementedError) as exc:
            refused = (
                f"the check process could not be denied the network ({type(exc).__name__}); set "
                "checks.deny_network: false only where seccomp is unavailable"
            )
    rules = _load_rules(specs)  # before confining: while their code is still readable
    if sandbox.confine_files and refused is None:
        from fivesafes_tes.egress.checks._landlock import confine

        try:
            confine(file.path for file in context.files)
        except (OSError, RuntimeError) as exc:
            refused = (
                f"the check process could not be confined to the files it judges ({type(exc).__name__}); "
                "set checks.confine_files: false only where Landlock is unavailable"
            )
    while True:
        try:
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if raw == _STOP:
            return
        job = json.loads(raw)
        reply = {"error": refused} if refused else _run_one(context, specs, rules, job["file"], job["step"])
        try:
            encoded = json.dumps(reply).encode()
        except (TypeError, ValueError) as exc:
            encoded = json.dumps(
                {"error": f"returned nonsense: {type(exc).__name__} encoding the result"}
            ).encode()
        conn.send_bytes(encoded)


def _load_rules(specs: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Each step's rule, or why it could not be loaded (reported for every file it was to judge)."""
    from fivesafes_tes.egress.checks import load_rule

    rules: list[Any] = []
    for spec, _ in specs:
        try:
            rules.append(load_rule(spec))
        except BaseException as exc:  # noqa: BLE001 - the rule's files fail closed, saying why
            rules.append(_LoadFailed(_describe(exc)))
    return rules


@dataclasses.dataclass(frozen=True)
class _LoadFailed:
    error: str


def _run_one(
    context: CheckContext,
    specs: list[tuple[str, dict[str, Any]]],
    rules: list[Any],
    file_index: int,
    step: int,
) -> dict[str, Any]:
    _, config = specs[step]
    rule = rules[step]
    if isinstance(rule, _LoadFailed):
        return {"error": rule.error, "version": None}
    version = getattr(rule, "version", None)
    try:
        result = rule.check(context.files[file_index], json.loads(json.dumps(config)), context)
    except BaseException as exc:  # noqa: BLE001 - whatever a rule does, the file fails closed
        return {"error": _describe(exc), "version": version}
    if not isinstance(result, RuleResult):
        return {
            "error": f"returned nonsense: a {type(result).__name__}, not a RuleResult",
            "version": version,
        }
    return {"result": _to_json(result)}


def _to_json(result: RuleResult) -> dict[str, Any]:
    data = dataclasses.asdict(result)
    data["verdict"] = str(result.verdict)
    for finding in data["findings"]:
        finding["verdict"] = str(finding["verdict"])
    return data


def _describe(exc: BaseException) -> str:
    """The exception's type and where it was raised; never its message (it may quote the file)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return f"raised {type(exc).__name__}"
    last = frames[-1]
    return f"raised {type(exc).__name__} at {Path(last.filename).name}:{last.lineno} in {last.name}"


def _isolate(memory_bytes: int | None) -> None:
    """Own process group (so a timeout kills the rule's children too), no core dumps, bounded memory,
    output to /dev/null, and death with the parent."""
    import resource

    os.setpgrp()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    if sys.platform == "linux":
        from fivesafes_tes.egress.checks._kernel import libc

        libc().prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
