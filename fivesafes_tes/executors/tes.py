"""TES relay backend: each run is a task on the TRE's own TES server (the design's "each TRE's TES
executor": Funnel, TESK, or another Five Safes gateway), sent through py-tes.

The relayed task carries the run as TES says it: literal inputs as `content`, each dataset as a
DIRECTORY input from the URL the TRE's policy gives it (`Dataset.url`, one the TES server reads inside
the TRE), each writable folder as a DIRECTORY output to the run's prefix in the airlock's staging
area (`egress.staging_area`), the steps as executors, the limits as resources, and tags naming the
child, attempt, TRE and this agent's deployment. What the TES server leaves there is fetched, hashed
and held like any other output (`collect`).

What TES cannot say, the relay does itself or leaves to the TES server, and says so:
* the run's time limit: TES has no field for it, so the relay cancels a run past its deadline
  (TIMED_OUT) when it next polls;
* the user a step runs as, its network, pids and the sandbox: the TES server's own configuration;
* logs: a TES server keeps only the tail of each step's stdout and stderr in its task logs (Funnel and
  TESK truncate them; a Five Safes gateway shows only what its output checkers released), and that
  is what `collect` hands back as the step's logs.

The remote id of each run is kept in the agent's database (`agent_relay_runs`, through a `RelayLedger`)
before and after it is created, so a restarted agent re-attaches to the run instead of starting it
twice, and `sweep` finds the runs of children it no longer has, also by their tags on the TES server.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import requests
import tes
from sqlalchemy import delete, select

from fivesafes_tes.agent.tables import RelayRun
from fivesafes_tes.db import Database
from fivesafes_tes.egress import staging_area
from fivesafes_tes.egress.store import ObjectStore

from .base import (
    BackendContext,
    Collected,
    ExecutorError,
    Outcome,
    RunResult,
    RunSpec,
    StepResult,
)

log = logging.getLogger(__name__)

TAG_CHILD = "fivesafes_child"
TAG_ATTEMPT = "fivesafes_attempt"
TAG_TRE = "fivesafes_tre"
TAG_DEPLOYMENT = "fivesafes_deployment"

# What each TES state means for the run: None while it may still change.
STATES: dict[str, Outcome | None] = {
    "UNKNOWN": None,
    "QUEUED": None,
    "INITIALIZING": None,
    "RUNNING": None,
    "PAUSED": None,
    "CANCELING": None,
    "COMPLETE": Outcome.SUCCEEDED,
    "EXECUTOR_ERROR": Outcome.FAILED,
    "SYSTEM_ERROR": Outcome.FAILED,
    "CANCELED": Outcome.CANCELED,
    "PREEMPTED": Outcome.LOST,
}
_MESSAGE_LIMIT = 2000
_PAGE = 256
_GiB = 1 << 30


@dataclass
class RelayRecord:
    """A run as the relay keeps it: `remote_id` None while it is being created; `result` once ended."""

    child_id: str
    attempt: int
    remote_id: str | None
    deadline: float  # epoch seconds
    max_bytes: int  # most the run may leave in the staging area
    result: RunResult | None = None


class RelayLedger(Protocol):
    """Where the relay keeps its runs, so that they outlive the process (the agent's database)."""

    def get(self, child_id: str) -> RelayRecord | None: ...

    def put(self, record: RelayRecord) -> None: ...

    def delete(self, child_id: str) -> None: ...

    def all(self) -> list[RelayRecord]: ...


class DatabaseLedger:
    """The relay's runs in the agent's own database (table `agent_relay_runs`)."""

    def __init__(self, db: Database) -> None:  # migrated by the agent (agent.schema)
        self.db = db

    def get(self, child_id: str) -> RelayRecord | None:
        with self.db.read() as session:
            row = session.get(RelayRun, child_id)
            return None if row is None else _record(row)

    def put(self, record: RelayRecord) -> None:
        row = RelayRun(
            child_id=record.child_id,
            attempt=record.attempt,
            remote_id=record.remote_id,
            deadline=record.deadline,
            max_bytes=record.max_bytes,
            result=None if record.result is None else _result_json(record.result),
        )
        with self.db.write() as session:
            session.merge(row)

    def delete(self, child_id: str) -> None:
        with self.db.write() as session:
            session.execute(delete(RelayRun).where(RelayRun.child_id == child_id))

    def all(self) -> list[RelayRecord]:
        with self.db.read() as session:
            return [_record(row) for row in session.scalars(select(RelayRun))]


def _record(row: RelayRun) -> RelayRecord:
    return RelayRecord(
        child_id=row.child_id,
        attempt=row.attempt,
        remote_id=row.remote_id,
        deadline=row.deadline,
        max_bytes=row.max_bytes,
        result=None if row.result is None else _result_of_json(row.result),
    )


def _result_json(result: RunResult) -> dict[str, Any]:
    return {
        "outcome": result.outcome.value,
        "steps": [asdict(step) for step in result.steps],
        "message": result.message,
    }


def _result_of_json(data: Mapping[str, Any]) -> RunResult:
    steps = [StepResult(**step) for step in data.get("steps", [])]
    return RunResult(Outcome(data["outcome"]), steps, str(data.get("message", "")))


class TesRelayExecutor:
    """Runs on a TES server inside the TRE, with outputs staged in the airlock. Every method is
    idempotent and keeps its state in `ledger`, so another instance on the same ledger carries on."""

    name = "tes"

    def __init__(
        self,
        url: str,
        *,
        store: ObjectStore,
        ledger: RelayLedger,
        tre: str,
        deployment: str,
        datasets: Mapping[str, str] | None = None,
        token: str | None = None,
        token_file: Path | None = None,
        timeout_s: float = 30.0,
        poll_s: float = 5.0,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"FIVESAFES_AGENT_TES_URL: {url!r} is not an http:// or https:// URL")
        self.url = url.rstrip("/")
        self.store = store
        self.ledger = ledger
        self.tre = tre
        self.deployment = deployment
        self.datasets = dict(datasets or {})  # dataset name -> URL the TES server reads
        self._token = token
        self._token_file = token_file
        self._timeout = max(1, math.ceil(timeout_s))
        self._poll_s = poll_s
        self._tags = dict(tags or {})
        self._asked: dict[str, float] = {}  # child -> monotonic time its state was last asked

    @classmethod
    def from_context(cls, context: BackendContext) -> TesRelayExecutor:
        """The relay the agent's settings (`FIVESAFES_AGENT_TES_*`) and policy describe; ValueError,
        naming the setting, when they cannot work."""
        relay = context.settings.tes
        if not relay.url:
            raise ValueError(
                "FIVESAFES_AGENT_TES_URL: the tes executor needs the URL of the TRE's TES server"
            )
        datasets = {}
        for name, dataset in context.datasets.items():
            url = getattr(dataset, "url", None)
            if not url:
                raise ValueError(
                    f"dataset {name!r} of the TRE's policy has no url: the tes executor needs, for each "
                    f"dataset, a URL the TRE's TES server reads (datasets.{name}.url)"
                )
            datasets[name] = str(url)
        if context.store is None:
            raise ValueError("the tes executor stages outputs in the airlock: FIVESAFES_AGENT_AIRLOCK_*")
        db = context.db
        if db is None:
            db = Database(context.settings.effective_database_url, pool_size=2)
        return cls(
            relay.url,
            store=context.store,
            ledger=DatabaseLedger(db),
            tre=context.tre,
            deployment=context.deployment,
            datasets=datasets,
            token=relay.token.get_secret_value() if relay.token is not None else None,
            token_file=relay.token_file,
            timeout_s=relay.timeout_s,
            poll_s=relay.poll_s,
            tags=relay.tags,
        )

    # --- the Executor interface -------------------------------------------------------------------

    def start(self, spec: RunSpec) -> None:
        task = self.task_of(spec)
        record = self.ledger.get(spec.child_id)
        if record is not None and record.attempt > spec.attempt:
            return
        if record is not None and record.attempt == spec.attempt:
            if record.remote_id is not None:
                return
            # Created before a crash, perhaps: the remote id was never written down.
            record.remote_id = self._find(spec.child_id, spec.attempt)
            if record.remote_id is not None:
                self.ledger.put(record)
                return
        elif record is not None:
            self.cleanup(spec.child_id)  # an older attempt: stop it, drop what it staged
        record = RelayRecord(
            spec.child_id,
            spec.attempt,
            None,
            deadline=time.time() + spec.limits.runtime_s,
            max_bytes=spec.limits.disk_bytes,
        )
        self.ledger.put(record)  # first, so that a crash while creating leaves a trace to look for
        with self._remote("create a task"):
            try:
                record.remote_id = str(self._client().create_task(task))
            except requests.HTTPError as exc:
                if exc.response is not None:  # it answered: the task was refused, not created
                    self.ledger.delete(spec.child_id)
                raise
        self.ledger.put(record)
        log.info("child %s attempt %s relayed as task %s", spec.child_id, spec.attempt, record.remote_id)

    def poll(self, child_id: str) -> RunResult | None:
        record = self.ledger.get(child_id)
        if record is None:
            return RunResult(Outcome.LOST, [], "the TES relay has no record of the run")
        if record.result is not None:
            return record.result
        last = self._asked.get(child_id)
        if last is not None and time.monotonic() - last < self._poll_s and time.time() < record.deadline:
            return None
        self._asked[child_id] = time.monotonic()
        if not self._resolve(record):
            return self._end(
                record, RunResult(Outcome.LOST, [], "the run never reached the TRE's TES server")
            )
        assert record.remote_id is not None
        task = self._get(record.remote_id)
        if task is None:
            return self._end(
                record, RunResult(Outcome.LOST, [], "the TRE's TES server no longer knows the run")
            )
        result = result_of(task)
        if result is None and time.time() >= record.deadline:
            self._cancel_remote(record.remote_id)
            result = RunResult(
                Outcome.TIMED_OUT,
                steps_of(task),
                "the run was stopped at its time limit (the TRE's TES server was told to cancel it)",
            )
        return None if result is None else self._end(record, result)

    def cancel(self, child_id: str) -> RunResult | None:
        record = self.ledger.get(child_id)
        if record is None:
            return None
        if record.result is not None:
            return record.result
        if not self._resolve(record):
            return self._end(
                record,
                RunResult(Outcome.CANCELED, [], "the run was canceled before it reached the TES server"),
            )
        assert record.remote_id is not None
        task = self._get(record.remote_id)
        if task is None:
            return self._end(
                record, RunResult(Outcome.LOST, [], "the TRE's TES server no longer knows the run")
            )
        ended = result_of(task)
        if ended is not None:
            return self._end(record, ended)
        self._cancel_remote(record.remote_id)
        return self._end(
            record,
            RunResult(
                Outcome.CANCELED,
                steps_of(task),
                "the run was canceled (the TRE's TES server was told to stop it)",
            ),
        )

    def collect(self, child_id: str, scratch: Path) -> Collected | None:
        """The files the TES server delivered to the run's staging prefix, and each step's stdout and
        stderr from its task logs (FULL view). A TES server keeps only the tail of those logs: what it
        kept is what is collected. None until every output the task log lists is at the staging prefix
        (a Five Safes gateway delivers them after it says COMPLETE)."""
        record = self.ledger.get(child_id)
        if record is None:
            return Collected()
        if record.result is None:
            return None
        task = self._get(record.remote_id) if record.remote_id is not None else None
        staged = staging_area.url(self.store, staging_area.prefix(child_id, record.attempt))
        if task is not None and record.result.outcome in (Outcome.SUCCEEDED, Outcome.FAILED):
            waiting = [o.url for o in _last_log(task, "outputs") if not str(o.url or "").startswith(staged)]
            if waiting:
                log.info("child %s: %d outputs not yet at its staging prefix", child_id, len(waiting))
                return None
        staged_into = scratch / "staged"
        staged_into.mkdir(parents=True, exist_ok=True)
        collected = staging_area.fetch(
            self.store, child_id, record.attempt, staged_into, max_bytes=record.max_bytes
        )
        logs = scratch / "logs"
        for step, entry in enumerate(_last_log(task, "logs") if task is not None else []):
            for stream in ("stdout", "stderr"):
                text = getattr(entry, stream, None)
                if text is None or (step, stream) in collected.logs:
                    continue
                logs.mkdir(parents=True, exist_ok=True)
                path = logs / f"step-{step}.{stream}"
                path.write_text(str(text), encoding="utf-8")
                collected.logs[(step, stream)] = path
        return collected

    def running(self) -> dict[str, int]:
        """Runs this relay started (or began to) and has not yet seen end; `poll` finds how each ended."""
        return {r.child_id: r.attempt for r in self.ledger.all() if r.result is None}

    def cleanup(self, child_id: str) -> None:
        record = self.ledger.get(child_id)
        if record is not None and record.result is None and self._resolve(record):
            assert record.remote_id is not None
            self._cancel_remote(record.remote_id)
        staging_area.discard(self.store, child_id)
        self.ledger.delete(child_id)
        self._asked.pop(child_id, None)

    def sweep(self, keep: set[str]) -> list[str]:
        """Cancel and forget the runs of children not in `keep`: those in the ledger, and any task on
        the TES server tagged with this deployment that has not ended (one created just before a crash
        whose remote id was never written down)."""
        removed = set()
        for record in self.ledger.all():
            if record.child_id not in keep:
                self.cleanup(record.child_id)
                removed.add(record.child_id)
        for task in self._ours():
            child = (task.tags or {}).get(TAG_CHILD)
            if child and child not in keep and STATES.get(str(task.state)) is None:
                self._cancel_remote(str(task.id))
                staging_area.discard(self.store, child)
                removed.add(child)
        return sorted(removed)

    # --- the task sent ----------------------------------------------------------------------------

    def task_of(self, spec: RunSpec) -> tes.Task:
        """The TES task that runs `spec` on the TRE's TES server. ValueError for a spec it cannot carry."""
        if not spec.steps:
            raise ValueError("a run needs at least one step")
        inputs = []
        for item in spec.inputs:
            try:
                content = item.content.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(
                    f"input {item.target} is not UTF-8 text: TES carries literal inputs as text only"
                ) from None
            inputs.append(tes.Input(path=item.target, content=content, type="FILE"))
        for dataset in spec.datasets:
            if dataset.name not in self.datasets:
                raise ValueError(
                    f"dataset {dataset.name!r} has no url the TES server reads (datasets.{dataset.name}.url)"
                )
            inputs.append(tes.Input(path=dataset.target, url=self.datasets[dataset.name], type="DIRECTORY"))
        outputs = [
            tes.Output(
                path=folder,
                url=staging_area.url(
                    self.store, staging_area.folder_key(spec.child_id, spec.attempt, folder)
                ),
                type="DIRECTORY",
            )
            for folder in spec.writable
        ]
        executors = [
            tes.Executor(
                image=step.image,
                command=list(step.command),
                workdir=step.workdir,
                stdin=step.stdin,
                stdout=step.stdout,
                stderr=step.stderr,
                env=dict(step.env) or None,
                ignore_error=step.ignore_error or None,
            )
            for step in spec.steps
        ]
        limits = spec.limits
        return tes.Task(
            name=f"fivesafes {spec.tre} {spec.child_id}",
            inputs=inputs or None,
            outputs=outputs or None,
            executors=executors,
            resources=tes.Resources(
                cpu_cores=max(1, math.ceil(limits.cpu_cores)),
                ram_gb=round(limits.memory_bytes / _GiB, 3),
                disk_gb=round(limits.disk_bytes / _GiB, 3),
            ),
            tags={
                **self._tags,
                TAG_CHILD: spec.child_id,
                TAG_ATTEMPT: str(spec.attempt),
                TAG_TRE: spec.tre,
                TAG_DEPLOYMENT: self.deployment,
            },
        )

    # --- talking to the TES server ----------------------------------------------------------------

    def _client(self) -> tes.HTTPClient:
        token = self._token
        if token is None and self._token_file is not None:
            try:
                token = self._token_file.read_text().strip()
            except OSError as exc:
                raise ExecutorError(
                    f"the token for the TRE's TES server cannot be read from {self._token_file} "
                    f"(FIVESAFES_AGENT_TES_TOKEN_FILE): {exc.strerror or exc}"
                ) from None
        return tes.HTTPClient(self.url, timeout=self._timeout, token=token)

    @contextlib.contextmanager
    def _remote(self, what: str) -> Iterator[None]:
        """Turn a failure to reach or be answered by the TES server into an ExecutorError in plain words."""
        try:
            yield
        except requests.RequestException as exc:
            # py-tes raises HTTPError without a response when no address it tries answers at all
            response = exc.response if isinstance(exc, requests.HTTPError) else None
            if response is None:
                raise ExecutorError(
                    f"the TRE's TES server at {self.url} cannot be reached (to {what}): {type(exc).__name__}"
                ) from None
            raise ExecutorError(
                f"the TRE's TES server at {self.url} answered HTTP {response.status_code} when asked to "
                f"{what}: {response.text[:_MESSAGE_LIMIT]}"
            ) from None

    def _get(self, remote_id: str) -> tes.Task | None:
        """The task in the FULL view; None when the TES server does not know it (404)."""
        with self._remote(f"report on task {remote_id}"):
            try:
                task: tes.Task = self._client().get_task(remote_id, view="FULL")
            except requests.HTTPError as exc:
                if exc.response is not None and exc.response.status_code == 404:
                    return None
                raise
            return task

    def _cancel_remote(self, remote_id: str) -> None:
        """Cancel the task; a no-op for one that ended (as TES says) or that the server no longer knows."""
        with self._remote(f"cancel task {remote_id}"):
            try:
                self._client().cancel_task(remote_id)
            except requests.HTTPError as exc:
                if exc.response is None or exc.response.status_code != 404:
                    raise

    def _resolve(self, record: RelayRecord) -> bool:
        """Whether the record has its remote id, looking for it if a crash came before it was written."""
        if record.remote_id is None:
            record.remote_id = self._find(record.child_id, record.attempt)
            if record.remote_id is not None:
                self.ledger.put(record)
        return record.remote_id is not None

    def _find(self, child_id: str, attempt: int) -> str | None:
        for task in self._ours():
            tags = task.tags or {}
            if tags.get(TAG_CHILD) == child_id and tags.get(TAG_ATTEMPT) == str(attempt):
                return str(task.id)
        return None

    def _ours(self) -> Iterator[tes.Task]:
        """Every task on the TES server tagged with this deployment and TRE (BASIC view, page by page)."""
        token: str | None = None
        while True:
            with self._remote("list its tasks"):
                page = self._client().list_tasks(view="BASIC", page_size=_PAGE, page_token=token)
            for task in page.tasks or []:
                tags = task.tags or {}
                if tags.get(TAG_DEPLOYMENT) == self.deployment and tags.get(TAG_TRE) == self.tre:
                    yield task
            token = page.next_page_token
            if not token:
                return

    def _end(self, record: RelayRecord, result: RunResult) -> RunResult:
        record.result = result
        self.ledger.put(record)
        self._asked.pop(record.child_id, None)
        return result


# --- reading a TES task ---------------------------------------------------------------------------


def _last_log(task: tes.Task, field: str) -> list[Any]:
    logs = task.logs or []
    return list(getattr(logs[-1], field, None) or []) if logs else []


def _rfc3339(when: datetime | None) -> str:
    if when is None:
        return ""
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when.isoformat(timespec="microseconds") + "Z"


def steps_of(task: tes.Task) -> list[StepResult]:
    """The steps that ran, from the task's last log (an attempt's), in order."""
    return [
        StepResult(int(entry.exit_code), _rfc3339(entry.start_time), _rfc3339(entry.end_time))
        for entry in _last_log(task, "logs")
        if entry.exit_code is not None
    ]


def result_of(task: tes.Task) -> RunResult | None:
    """How the run ended, by the task's state; None while it may still change."""
    state = str(task.state or "UNKNOWN")
    outcome = STATES.get(state)
    if outcome is None:
        return None
    steps = steps_of(task)
    if state == "EXECUTOR_ERROR":
        failed = next(((n, s.exit_code) for n, s in enumerate(steps) if s.exit_code != 0), None)
        message = (
            f"step {failed[0] + 1} of {len(task.executors or steps)} exited with code {failed[1]}"
            if failed is not None
            else "a step failed on the TRE's TES server"
        )
    elif state == "SYSTEM_ERROR":
        said = "; ".join(str(line) for line in _last_log(task, "system_logs")) or "it gave no reason"
        message = f"the TRE's TES server failed the task: {said}"[:_MESSAGE_LIMIT]
    elif state == "PREEMPTED":
        message = "the TRE's TES server stopped the task (preempted): its machine was taken back"
    elif state == "CANCELED":
        message = "the run was canceled on the TRE's TES server"
    else:
        message = ""
    return RunResult(outcome, steps, message)
