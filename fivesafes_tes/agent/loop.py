"""The TRE agent: pull work from the gateway, decide locally, run it sandboxed, hold its outputs.

Like a Kopf operator, it keeps its state outside the process (its own database) and every handler
is idempotent, so `kill -9` at any point followed by a restart resumes without losing or repeating
work: events are written to an outbox before they are sent and re-sent with the same sequence
number; containers are found again by their labels; held files are re-uploaded to the same keys.

Three threads: the poller (long-polls the gateway and queues what it hears), the heartbeater (keeps
leases alive), and the worker (the only one that changes state).
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from fivesafes_tes import audit
from fivesafes_tes.agent import approvals, holding, schema, staging
from fivesafes_tes.agent.client import GatewayClient, Rejected
from fivesafes_tes.agent.health import WORKER, Health, Probes, backlog
from fivesafes_tes.agent.outbox import ENDED_WITH_HELD_FILES, Outbox
from fivesafes_tes.agent.policy import TrePolicy
from fivesafes_tes.agent.release import Release
from fivesafes_tes.agent.tables import (
    AgentIdentity,
    LocalChild,
    LocalProject,
    OutgoingEvent,
)
from fivesafes_tes.auth.principal import Person
from fivesafes_tes.db import Database
from fivesafes_tes.db.base import utcnow
from fivesafes_tes.egress.store import ObjectStore, StoreUnavailable
from fivesafes_tes.executors import BackendContext, Executor, RequestRefused, sandbox
from fivesafes_tes.executors import create as create_executor
from fivesafes_tes.settings import AgentSettings
from fivesafes_tes.submission.stages import TASK_ACTS, Stage

log = logging.getLogger(__name__)

# Stages before the run: a refusal there depends only on the request, so the researcher may read it.
BEFORE_RUN = (Stage.LEASED, Stage.AWAITING_TRE_APPROVAL, Stage.STAGING)


class CannotStart(RuntimeError):
    """The agent's configuration would fail every task; the message says what to change."""


@dataclass
class _Grant:
    data: dict[str, Any]


@dataclass
class _Cancel:
    child_id: str


def _submitter(child: LocalChild) -> Person:
    return Person(child.submitter_issuer, child.submitter_subject, child.username)


def open_database(settings: AgentSettings) -> Database:
    """The agent's database, migrated to the newest schema (its tables and its own audit chain);
    CannotStart, saying why, if it cannot be."""
    db = Database(settings.effective_database_url, pool_size=5)
    try:
        schema.upgrade(db.engine)
    except schema.SchemaRefused as exc:
        db.dispose()
        raise CannotStart(f"FIVESAFES_AGENT_DATABASE_URL: {exc}") from None
    return db


def deployment_id(db: Database) -> str:
    """This agent's deployment id (made on first use and kept in its database): the executor labels
    everything it creates with it, and sweeps and re-attaches to nothing else."""
    with db.write() as session:
        existing = session.scalars(select(AgentIdentity.deployment)).first()
        if existing is not None:
            return existing
        made = uuid.uuid4().hex
        session.add(AgentIdentity(deployment=made))
        return made


HOST_FOLDER_BACKENDS = ("docker", "local")


def unmountable(settings: AgentSettings, policy: TrePolicy) -> list[str]:
    """Why, for a backend that mounts host folders, the work directory or a dataset could never be
    mounted into a task, or a dataset has no host folder (empty when all is well): checked at start,
    so a wrong path stops the agent instead of failing every task."""
    if settings.executor not in HOST_FOLDER_BACKENDS:
        return []
    problems = []
    work = sandbox.mount_source_refusal(settings.data_dir / "work")
    if work:
        problems.append(f"FIVESAFES_AGENT_DATA_DIR: {work}; choose a data directory outside them")
    for name, dataset in sorted(policy.datasets.items()):
        if dataset.path is None:
            problems.append(
                f"dataset {name}: the {settings.executor} executor mounts a host folder; give its path"
            )
            continue
        refusal = sandbox.mount_source_refusal(dataset.path)
        if refusal:
            problems.append(f"dataset {name}: {refusal}")
    return problems


def make_executor(settings: AgentSettings, policy: TrePolicy, db: Database, store: ObjectStore) -> Executor:
    """The backend the settings name, configured for this agent; CannotStart, saying what to change,
    when its configuration cannot work (a dataset without the source this backend reads)."""
    context = BackendContext(
        tre=settings.tre,
        deployment=deployment_id(db),
        work_dir=settings.data_dir / "work",
        datasets=policy.datasets,
        store=store,
        settings=settings,
        db=db,
    )
    try:
        return create_executor(settings.executor, context)
    except ValueError as exc:
        raise CannotStart(f"FIVESAFES_AGENT_EXECUTOR={settings.executor}: {exc}") from None


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        client: GatewayClient,
        executor: Executor,
        store: ObjectStore,
        policy: TrePolicy,
        db: Database | None = None,
    ) -> None:
        self.settings = settings
        self.tre = settings.tre
        self.client = client
        self.executor = executor
        self.store = store
        self.policy = policy
        self.db = db or open_database(settings)
        self.inbox: queue.Queue[_Grant | _Cancel] = queue.Queue()
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_sync = 0.0
        self.last_contact: datetime | None = None  # the gateway's last answer, for the admins' health page
        self._progressed = False  # set by _emit: a child moved, so look again without waiting
        # Ready while the last sync is under three sync periods old: one missed sync is not an outage.
        self.probes = Probes(settings.worker_stall_s, 3 * settings.sync_s + settings.gateway_timeout_s)
        self.outbox = Outbox(
            self.db,
            client,
            granularity_s=settings.report_granularity_s,
            retry_first_s=settings.event_retry_s,
            retry_cap_s=settings.retry_cap_s,
            on_canceled=lambda child_id: self.inbox.put(_Cancel(child_id)),
            on_ended=self._empty_airlock,
        )
        self.release = Release(self.db, store, client, self.tre, self._emit)

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> Agent:
        policy = TrePolicy.load(settings.policy_file)
        client = GatewayClient.from_settings(settings)
        db = open_database(settings)
        store = ObjectStore.from_settings(settings.airlock)
        try:
            executor = make_executor(settings, policy, db, store)
        except CannotStart:
            db.dispose()
            raise
        return cls(settings, client=client, executor=executor, store=store, policy=policy, db=db)

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Recover, then run the three threads until `shutdown()` (and the admin API, if configured)."""
        from fivesafes_tes.egress.checks.runner import prewarm

        problems = unmountable(self.settings, self.policy)
        if problems:
            raise CannotStart("; ".join(problems))
        prewarm()
        self.store.ensure_bucket()
        self.recover()
        if self.settings.admin_listen:
            self._serve_admin_api()
        for name, target in (
            ("poller", self._poll_forever),
            ("heartbeat", self._heartbeat_forever),
            (WORKER, self._work_forever),
        ):
            thread = threading.Thread(target=target, name=f"agent-{self.tre}-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
            self.probes.watch(name, thread)

    def _serve_admin_api(self) -> None:
        import uvicorn

        from fivesafes_tes.agent.admin_api import create_admin_app, validator_from
        from fivesafes_tes.agent.pages import site_for

        s = self.settings
        host, _, port = (s.admin_listen or "").rpartition(":")
        validator = validator_from(s.oidc_issuer, s.oidc_audience, s.oidc_jwks_url, s.roles_claim)
        app = create_admin_app(
            self.db,
            self.tre,
            validator,
            require_tre_claim=s.require_tre_claim,
            store=self.store,
            site=site_for(s, validator, self.db) if s.web_pages else None,
            policy=self.policy,
            health=self.health,
            probes=self.probes,
        )
        self._admin_server = uvicorn.Server(
            uvicorn.Config(app, host=host or "127.0.0.1", port=int(port), log_level="warning", lifespan="off")
        )
        thread = threading.Thread(target=self._admin_server.run, name=f"agent-{self.tre}-admin", daemon=True)
        thread.start()
        self._threads.append(thread)

    def health(self) -> Health:
        """How this agent is doing, as its admins' health page shows it."""
        with self.db.read() as session:
            children, unsent = backlog(session)
        return Health(
            tre=self.tre,
            executor=self.settings.executor,
            last_contact=self.last_contact,
            children=children,
            unsent_events=unsent,
            threads={thread.name: thread.is_alive() for thread in self._threads},
        )

    def shutdown(self, timeout: float = 10.0) -> None:
        self.stop.set()
        if getattr(self, "_admin_server", None) is not None:
            self._admin_server.should_exit = True
        self.client.close()
        for thread in self._threads:
            thread.join(timeout)

    def recover(self) -> None:
        """At start: sweep what no active child owns (audited), and re-send what was not confirmed sent."""
        with self.db.read() as session:
            keep = {
                c.child_id for c in session.scalars(select(LocalChild).where(LocalChild.active.is_(True)))
            }
        removed = self.executor.sweep(keep)
        scratch = self.settings.data_dir / "scratch"
        for folder in scratch.iterdir() if scratch.is_dir() else []:
            if folder.name not in keep:  # left by a crash between a hold and its clean-up
                shutil.rmtree(folder, ignore_errors=True)
        with self.db.read() as session:
            unsent = select(OutgoingEvent.child_id).where(OutgoingEvent.sent.is_(False))
            ended = [
                c.child_id
                for c in session.scalars(
                    select(LocalChild).where(
                        LocalChild.active.is_(False),
                        LocalChild.stage.in_(ENDED_WITH_HELD_FILES),
                        LocalChild.child_id.not_in(unsent),  # emptied once their ending is sent
                    )
                )
                if not (c.result or {}).get("airlock_emptied")
            ]
        for child_id in ended:  # a crash came between the final event and emptying the airlock
            self._empty_airlock(child_id)
        with self.db.write() as session:
            audit.record(
                session,
                actor=f"agent:{self.tre}",
                action="agent.sweep",
                object=f"tre:{self.tre}",
                outcome="ok",
                detail={"removed": sorted(removed), "kept": len(keep)},
            )
        self.outbox.flush()
        self.probes.mark_recovered()

    # --- threads --------------------------------------------------------------------------------

    def _poll_forever(self) -> None:
        while not self.stop.is_set():
            try:
                answer = self.client.lease(self.settings.poll_wait_s)
            except ConnectionError:
                continue  # only raised once the client is closed: the loop ends
            except Rejected as exc:
                log.error("the gateway refused this agent's lease request: %s", exc)
                self.stop.wait(self.settings.lease_refused_wait_s)
                continue
            self.last_contact = utcnow()
            for cancel in answer["cancel"]:
                self.inbox.put(_Cancel(cancel["child_id"]))
            for grant in answer["leases"]:
                self.inbox.put(_Grant(grant))

    def _heartbeat_forever(self) -> None:
        while not self.stop.wait(self.settings.heartbeat_s):
            with self.db.read() as session:
                # Also children that ended here but whose last events wait for their reporting time:
                # their leases must not lapse meanwhile.
                unsent = select(OutgoingEvent.child_id).where(OutgoingEvent.sent.is_(False))
                held = [
                    (c.child_id, c.attempt)
                    for c in session.scalars(
                        select(LocalChild).where(
                            LocalChild.active.is_(True) | LocalChild.child_id.in_(unsent)
                        )
                    )
                ]
            if not held:
                continue
            try:
                answers = self.client.heartbeat(held)
            except ConnectionError:
                continue
            except Rejected as exc:
                log.error("heartbeat refused: %s", exc)
                continue
            self.last_contact = utcnow()
            for child_id, status in answers.items():
                if status in ("canceled", "ended", "unknown"):
                    self.inbox.put(_Cancel(child_id))

    def _work_forever(self) -> None:
        while not self.stop.is_set():
            self.probes.beat()
            try:
                self.work_once()
            except ConnectionError:
                continue
            except Exception:
                log.exception("agent work loop error; continuing")
                self.stop.wait(self.settings.work_error_wait_s)

    def work_once(self) -> None:
        """Handle everything queued, then move every active child one step if it can.

        The wait for the queue is skipped while children are moving, so a task goes from stage to
        stage without a tick's pause between each; an idle agent waits a tick, or until work comes: a
        lease granted mid-tick starts its run at once (issue 12: its Job in under 100 ms).
        """
        wait = 0.0 if self._progressed else self.settings.tick_s
        due = self.outbox.next_due()
        if due is not None:  # an event held back is sent when due, not up to a tick later
            wait = max(0.0, min(wait, due - time.time()))
        deadline = time.monotonic() + wait
        self._progressed = False
        while True:
            try:
                item = self.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if isinstance(item, _Grant):
                self._accept(item.data)
            else:
                self._cancel(item.child_id)
            deadline = time.monotonic()  # work has come: take what else is queued, then move it at once
        if time.monotonic() - self._last_sync > self.settings.sync_s:
            self.sync()
        self.outbox.flush()
        now = time.time()
        with self.db.read() as session:
            active = [
                c.child_id
                for c in session.scalars(
                    select(LocalChild).where(LocalChild.active.is_(True), LocalChild.retry_at <= now)
                )
            ]
        for child_id in active:
            self.advance(child_id)

    # --- what the gateway tells us ------------------------------------------------------------

    def _accept(self, grant: dict[str, Any]) -> None:
        given_up: tuple[str, int] | None = None
        with self.db.write() as session:
            child = session.get(LocalChild, grant["child_id"])
            if child is None:
                session.add(
                    LocalChild(
                        child_id=grant["child_id"],
                        task_id=grant["task_id"],
                        attempt=grant["attempt"],
                        stage=grant["stage"],
                        project=grant["project"],
                        username=grant["user"],
                        submitter_issuer=grant.get("user_issuer", ""),
                        submitter_subject=grant.get("user_subject", ""),
                        task=grant["task"],
                        submitted_at=grant.get("created_at") or "",
                        request=grant.get("request"),
                    )
                )
            elif grant["attempt"] > child.attempt:
                # Our lease lapsed (we were down or slow). Same child, new attempt: carry on from our own
                # stage, re-attaching to anything already running; older unsent events are void.
                for stale in session.scalars(
                    select(OutgoingEvent).where(
                        OutgoingEvent.child_id == child.child_id, OutgoingEvent.sent.is_(False)
                    )
                ):
                    session.delete(stale)
                child.attempt, child.next_seq, child.active = grant["attempt"], 0, True
                if child.stage in TASK_ACTS:  # the last attempt was lost while the task acted
                    child.attempts += 1
                    if child.attempts > self.settings.max_attempts:
                        given_up = (child.stage, child.attempts)
        if given_up is not None:
            self._give_up(grant["child_id"], *given_up)

    def _give_up(self, child_id: str, stage: str, attempts: int) -> None:
        """End a child whose task was taken up more than `max_attempts` times: it kills or stalls
        this agent each time, so it is not tried again."""
        reason = (
            f"gave up after {attempts} attempts: each earlier one was lost while the task was {stage} "
            f"(the cap is FIVESAFES_AGENT_MAX_ATTEMPTS={self.settings.max_attempts})"
        )
        self._fail(child_id, stage, reason, action="child.give_up")

    def _cancel(self, child_id: str) -> None:
        self.executor.cancel(child_id)
        self._empty_airlock(child_id)
        self.executor.cleanup(child_id)
        shutil.rmtree(self._scratch(child_id), ignore_errors=True)
        with self.db.write() as session:
            child = session.get(LocalChild, child_id)
            if child is not None and child.active:
                child.active, child.stage = False, Stage.CANCELED.value
                for pending in session.scalars(
                    select(OutgoingEvent).where(
                        OutgoingEvent.child_id == child_id, OutgoingEvent.sent.is_(False)
                    )
                ):
                    pending.sent = True  # the gateway has ended this child; nothing more to say
                audit.record(
                    session,
                    actor=f"agent:{self.tre}",
                    action="child.cancel",
                    object=f"child:{child_id}",
                    outcome="stopped",
                )
        try:
            self.client.cancel_ack(child_id)
        except Rejected as exc:
            log.info("cancel-ack for %s refused: %s", child_id, exc)

    def sync(self) -> None:
        """Refresh the projects assigned to this TRE, tell the gateway what this TRE will run, and push
        this TRE's decisions to the gateway."""
        self._last_sync = time.monotonic()
        answer = self.client.sync()
        self.last_contact = utcnow()
        self.probes.mark_synced()
        try:
            self.client.publish_policy(staging.admission(self.policy, self.tre).model_dump(mode="json"))
        except Rejected as exc:  # the gateway cannot check for us: this TRE still refuses what it must
            log.error("the gateway refused this TRE's policy: %s", exc)
        with self.db.write() as session:
            seen = set()
            for project in answer["projects"]:
                seen.add(project["name"])
                row = session.get(LocalProject, project["name"])
                if row is None:
                    row = LocalProject(name=project["name"])
                    session.add(row)
                row.title, row.members = project["title"], project["members"]
                row.starts_on, row.ends_on = project["starts_on"], project["ends_on"]
            for gone in session.scalars(select(LocalProject).where(LocalProject.name.not_in(seen))):
                session.delete(gone)
            pending = [d for d in approvals.unpushed(session) if d.project in seen]
            sent = {(d.project, d.username): d.decided_at for d in pending}
            body = [
                {
                    "project": d.project,
                    "username": d.username,
                    "decision": d.decision,
                    "reason": d.reason,
                    "decided_by": d.decided_by_name,  # for display at the gateway
                    "decided_at": d.decided_at.isoformat(),
                }
                for d in pending
            ]
        if body:
            self.client.push_decisions(body)
            with self.db.write() as session:
                for d in approvals.unpushed(session):
                    # Only what was sent: a decision made (or changed) meanwhile goes at the next sync.
                    if sent.get((d.project, d.username)) == d.decided_at:
                        d.pushed = True

    # --- the state machine -----------------------------------------------------------------------

    def advance(self, child_id: str) -> None:
        """Move one child a step. Whatever goes wrong in its handling stays this child's: a refusal
        ends it at once; any other error is retried after a wait, doubled each time, and after
        `max_child_errors` in a row ends it `system_failed`. An unavailable gateway or airlock is
        nobody's error: the child is tried again on the next tick, uncounted."""
        with self.db.read() as session:
            child = session.get(LocalChild, child_id)
        if child is None or not child.active or child.retry_at > time.time():
            return
        try:
            self._step(child)  # which keeps child.stage the stage it reached
        except ConnectionError:
            raise
        except StoreUnavailable as exc:
            log.warning("airlock unavailable while handling %s (%s): %s", child_id, child.stage, exc)
        except RequestRefused as exc:
            self._refused(child_id, child.stage, exc)
        except Exception as exc:  # noqa: BLE001  whatever it is, it is this child's alone
            self._errored(child_id, child.stage, exc)

    def _step(self, child: LocalChild) -> None:
        if child.stage == Stage.AWAITING_REVIEW and self.outbox.unsent(child.child_id):
            return  # the gateway takes released files only once it has heard the child awaits review
        handler = {
            Stage.LEASED: self._approve_and_start,
            Stage.AWAITING_TRE_APPROVAL: self._approve_and_start,
            Stage.STAGING: self._approve_and_start,
            Stage.RUNNING: self._watch,
            Stage.CHECKING: self._hold,
            Stage.AWAITING_REVIEW: self._settle,
        }.get(Stage(child.stage))
        if handler is not None:
            handler(child)

    def _approve_and_start(self, child: LocalChild) -> None:
        # Started before a crash: re-attach, never twice. A container exists only once `staging` was
        # recorded (just before the start), so a child still waiting on approval costs no listing.
        if child.stage == Stage.STAGING and child.child_id in self.executor.running():
            self._emit(child, Stage.RUNNING)
            return
        with self.db.read() as session:
            verdict = approvals.clearance(session, self.tre, child.project, _submitter(child))
        if verdict.verdict is approvals.Verdict.UNDECIDED:
            if child.stage != Stage.AWAITING_TRE_APPROVAL:
                self._emit(child, Stage.AWAITING_TRE_APPROVAL, verdict.message)
            return
        if verdict.verdict is approvals.Verdict.REJECTED:
            self._emit(child, Stage.REJECTED_BY_TRE, verdict.message, final=True)
            return
        spec = staging.prepare(
            child.task,
            child_id=child.child_id,
            attempt=child.attempt,
            tre=self.tre,
            project=child.project,
            policy=self.policy,
            run_as=self.settings.run_as,
        )
        if child.stage != Stage.STAGING:
            self._emit(child, Stage.STAGING, verdict.message)
        with self.db.write() as session:
            session.get(LocalChild, child.child_id).result = {"run": holding.spec_to_json(spec)}  # type: ignore[union-attr]
            approvals.bind(session, child.project, _submitter(child))
            if approvals.unpushed(session):
                # The decisions that let this child run reach the gateway before anything it does can
                # be released: its activity record's sign-off is never behind its results.
                self._last_sync = 0.0
        self.executor.start(spec)
        self._emit(child, Stage.RUNNING)

    def _refused(self, child_id: str, stage: str, exc: RequestRefused) -> None:
        """The request cannot run here. Before the run the researcher reads why; from `running` on the
        refusal could depend on what the task did, so it ends like any other failure there."""
        if stage not in BEFORE_RUN:
            self._fail(child_id, stage, f"refused: {exc}")
            return
        log.info("%s refused child %s at %s: %s", self.tre, child_id, stage, exc)
        self._discard_run(child_id)
        with self.db.write() as session:
            audit.record(
                session,
                actor=f"agent:{self.tre}",
                action="child.refuse",
                object=f"child:{child_id}",
                outcome=Stage.REJECTED_BY_TRE.value,
                detail={"stage": stage, "reason": str(exc)},
            )
            child = session.get(LocalChild, child_id)
        assert child is not None
        self._emit(child, Stage.REJECTED_BY_TRE, f"{self.tre} refused the task: {exc}", final=True)

    def _errored(self, child_id: str, stage: str, exc: Exception) -> None:
        """Count an unexpected error in a child's handling: try it again later, or end it at the cap."""
        error = f"{type(exc).__name__}: {exc}"
        with self.db.write() as session:
            child = session.get(LocalChild, child_id)
            assert child is not None
            child.errors += 1
            child.last_error = error
            errors = child.errors
            wait = min(self.settings.retry_cap_s, self.settings.child_retry_s * 2 ** (errors - 1))
            if errors < self.settings.max_child_errors:
                child.retry_at = time.time() + wait
            audit.record(
                session,
                actor=f"agent:{self.tre}",
                action="child.error",
                object=f"child:{child_id}",
                outcome="retry" if errors < self.settings.max_child_errors else "gave_up",
                detail={"stage": stage, "error": error, "errors": errors}
                | ({"retry_in_s": wait} if errors < self.settings.max_child_errors else {}),
            )
        if errors < self.settings.max_child_errors:
            log.warning(
                "child %s failed at %s (error %d of %d), trying it again in %.1f s",
                child_id,
                stage,
                errors,
                self.settings.max_child_errors,
                wait,
                exc_info=exc,
            )
            return
        log.error("child %s failed at %s %d times in a row: %s", child_id, stage, errors, error)
        self._fail(child_id, stage, error)

    def _fail(self, child_id: str, stage: str, error: str, *, action: str = "child.fail") -> None:
        """End a child `system_failed`: its run stopped and removed, its workspace deleted, and its
        airlock emptied once the gateway has the ending. The researcher reads the gateway's fixed line;
        what went wrong stays here, in the log and the audit."""
        self._discard_run(child_id)
        with self.db.write() as session:
            audit.record(
                session,
                actor=f"agent:{self.tre}",
                action=action,
                object=f"child:{child_id}",
                outcome=Stage.SYSTEM_FAILED.value,
                detail={"stage": stage, "error": error},
            )
            child = session.get(LocalChild, child_id)
        assert child is not None
        log.error("child %s ended system_failed at %s: %s", child_id, stage, error)
        self._emit(child, Stage.SYSTEM_FAILED, final=True)

    def _discard_run(self, child_id: str) -> None:
        """Stop and remove what the child's run left; what cannot be removed now, the sweep at the next
        start removes (the child is no longer active)."""
        try:
            self.executor.cancel(child_id)
            self.executor.cleanup(child_id)
        except Exception:
            log.exception("could not remove the run of %s; the next start sweeps it", child_id)
        shutil.rmtree(self._scratch(child_id), ignore_errors=True)

    def _watch(self, child: LocalChild) -> None:
        result = self.executor.poll(child.child_id)
        if result is None:
            return
        with self.db.write() as session:
            local = session.get(LocalChild, child.child_id)
            assert local is not None
            local.result = {
                **(local.result or {}),
                "outcome": holding.result_to_json(result),
                "ended_at": time.time(),
            }
        self._emit(child, Stage.CHECKING)

    def _hold(self, child: LocalChild) -> None:
        """Hold every output and log in the airlock, run the automated rules on them, then wait for review.
        The backend may still be gathering what the run left (a stage-out Job): then look next tick."""
        scratch = self._scratch(child.child_id)
        scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        collected = self.executor.collect(child.child_id, scratch)
        if collected is None:
            ended_at = (child.result or {}).get("ended_at", time.time())
            if time.time() - ended_at > self.settings.collect_timeout_s:
                self._fail(
                    child.child_id,
                    child.stage,
                    f"the {self.executor.name} executor did not hand over what the run left within "
                    f"{self.settings.collect_timeout_s:g} s of its end (FIVESAFES_AGENT_COLLECT_TIMEOUT_S)",
                )
            return
        if not holding.hold(self.db, self.store, self.policy.checks, child, collected):
            return
        # Nothing about the held files leaves with this event: not their number, sizes or verdicts.
        self._emit(child, Stage.AWAITING_REVIEW)
        self.executor.cleanup(child.child_id)
        shutil.rmtree(scratch, ignore_errors=True)

    def _settle(self, child: LocalChild) -> None:
        self.release.settle(child, self.policy.review)

    def _empty_airlock(self, child_id: str) -> None:
        holding.empty_airlock(self.db, self.store, child_id)

    # --- events -----------------------------------------------------------------------------------

    def _emit(
        self,
        child: LocalChild,
        stage: Stage,
        message: str | None = None,
        *,
        report: dict[str, Any] | None = None,
        final: bool = False,
    ) -> None:
        """Record the stage change and send its event through the outbox; the worker then looks again
        without waiting a tick."""
        self._progressed = True
        self.outbox.emit(child, stage, message, report=report, final=final)

    def _scratch(self, child_id: str) -> Path:
        """The agent's own folder for what a backend hands back of a run; never mounted into a task."""
        return self.settings.data_dir / "scratch" / child_id
