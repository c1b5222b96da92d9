"""Delivery of released outputs to the buckets their TES output urls name, retried until it succeeds.

When a child ends with files released and some TES output `url` names a bucket this gateway may
write to (`delivery_buckets`), the same transaction that ends it sets the child's `delivery_due_at`:
the delivery is owed from that moment, whatever happens to this process. It is then attempted at
once, after the agent's request is answered, and by every replica's delivery loop whenever it falls
due. An attempt first claims the child by moving `delivery_due_at` ahead (`delivery_claim_s`, renewed
after each file) with a conditional update, so two replicas never work on one child at once, and
one that died mid-delivery is taken over once its claim lapses. Each copy is verified against the
SHA-256 recorded at the TRE; what was delivered stays delivered. A failed attempt is audited and
retried after `delivery_retry_s`, doubling, up to `delivery_attempts`; then the child's system log
says which files were not delivered. They remain downloadable from the gateway throughout.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from fivesafes_tes import audit, failpoints
from fivesafes_tes.db.base import utcnow
from fivesafes_tes.egress.store import safe_key
from fivesafes_tes.submission import results, tasks
from fivesafes_tes.submission.tables import Child, ReleasedFile, Task, Tre

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from fivesafes_tes.gateway.app import GatewayContext

log = logging.getLogger(__name__)

POLL_S = 5.0  # how often each replica looks for deliveries that fell due
MAX_RETRY_S = 3600.0  # the backoff doubles up to this
_BATCH = 20


def schedule(session: Session, child: Child, buckets: list[str]) -> bool:
    """In the transaction that releases `child`'s files: owe a delivery if any output url names one
    of `buckets`, unless one is owed, under way, made or given up already (a repeated final event
    changes nothing). Returns whether one is owed now."""
    if not buckets or child.delivery_due_at is not None or child.delivery_attempts:
        return child.delivery_due_at is not None
    if child.report.get("delivered"):
        return False
    task = session.get(Task, child.task_id)
    files = list(session.scalars(select(ReleasedFile).where(ReleasedFile.child_id == child.id)))
    if task is None or not results.destinations(task.document, files, set(buckets)):
        return False
    child.delivery_due_at = utcnow()
    return True


class _Claim:
    """This gateway's hold on one child's delivery: `delivery_due_at` set to a moment only it knows,
    pushed ahead by a thread while the attempt runs. Another gateway may take the delivery over
    only once that moment has passed; if one did (this process stalled), `lost` is set and this
    attempt records nothing."""

    def __init__(self, ctx: GatewayContext, child_id: str, until: datetime) -> None:
        self._ctx, self._child_id, self.until = ctx, child_id, until
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hold, name=f"delivery-{child_id}", daemon=True)

    @classmethod
    def take(cls, ctx: GatewayContext, child_id: str) -> _Claim | None:
        """The child's delivery if it is due and nobody holds it: one conditional update."""
        now = utcnow()
        until = now + timedelta(seconds=ctx.settings.delivery_claim_s)
        with ctx.db.write() as session:
            claimed = session.execute(
                update(Child)
                .where(Child.id == child_id, Child.delivery_due_at.is_not(None), Child.delivery_due_at <= now)
                .values(delivery_due_at=until)
                .execution_options(synchronize_session=False)
            )
        if claimed.rowcount != 1:
            return None
        claim = cls(ctx, child_id, until)
        claim._thread.start()
        return claim

    def _hold(self) -> None:
        period = self._ctx.settings.delivery_claim_s / 3
        while not self._stop.wait(period):
            try:
                self.move(utcnow() + timedelta(seconds=self._ctx.settings.delivery_claim_s))
            except Exception:  # noqa: BLE001 - the database is away: the claim may lapse; checked at the end
                log.warning("could not renew the delivery claim on child %s", self._child_id)
            if self.lost:
                return

    def move(self, until: datetime | None, session: Session | None = None, **values: object) -> bool:
        """Set `delivery_due_at` to `until` (and `values`) if this gateway still holds the delivery."""

        def apply(session: Session) -> bool:
            moved = session.execute(
                update(Child)
                .where(Child.id == self._child_id, Child.delivery_due_at == self.until)
                .values(delivery_due_at=until, **values)
                .execution_options(synchronize_session=False)
            )
            if moved.rowcount != 1:
                self.lost = True
            return not self.lost

        if session is not None:
            return apply(session)  # the caller's transaction: the claim ends with it
        with self._ctx.db.write() as own:
            moved = apply(own)
        if moved and until is not None:
            self.until = until  # only once committed: a failed commit leaves the claim as it was
        return moved

    def release(self) -> None:
        self._stop.set()
        self._thread.join()


def deliver(ctx: GatewayContext, child_id: str) -> None:
    """One attempt at the child's owed delivery, if it is due and this gateway can claim it."""
    store = ctx.results_store
    if store is None:
        return
    claim = _Claim.take(ctx, child_id)
    if claim is None:
        return
    try:
        with ctx.db.read() as session:
            child = session.get(Child, child_id)
            task = session.get(Task, child.task_id)
            actor = f"agent:{session.get(Tre, child.tre_id).name}"
            query = select(ReleasedFile).where(ReleasedFile.child_id == child_id).order_by(ReleasedFile.id)
            files = list(session.scalars(query))
            targets = results.destinations(task.document, files, set(ctx.settings.delivery_buckets))
            done = dict(child.report.get("delivered", {}))
        delivered: dict[str, str] = {}
        failed: dict[str, tuple[str, str]] = {}
        for file in files:
            url = targets.get(file.name)
            if url is None or done.get(file.name) == url or claim.lost:
                continue
            bucket, _, key = url[5:].partition("/")
            try:
                store.with_bucket(bucket).copy_verified(store, file.key, safe_key(key), file.sha256)
            except Exception as exc:  # noqa: BLE001 - the store refused, was down, or the bytes differ
                failed[file.name] = (url, type(exc).__name__)
                continue
            delivered[file.name] = url
            failpoints.reach("release.delivered")
    finally:
        claim.release()
    if not claim.lost:
        _record(ctx, claim, child_id, actor, delivered, failed)
    if claim.lost:
        log.warning(
            "another gateway took over the delivery of child %s; this attempt is not recorded", child_id
        )


def _record(
    ctx: GatewayContext,
    claim: _Claim,
    child_id: str,
    actor: str,
    delivered: dict[str, str],
    failed: dict[str, tuple[str, str]],
) -> None:
    """What the attempt did, if this gateway still holds the delivery: done, a retry at a doubled
    interval (up to MAX_RETRY_S), or, after `delivery_attempts`, given up and said so."""
    settings = ctx.settings
    with ctx.db.write() as session:
        child = session.get(Child, child_id)
        attempts = child.delivery_attempts + 1 if failed else 0  # done: nothing counts against it
        if not failed or attempts >= settings.delivery_attempts:
            due_at = None
        else:
            wait = min(settings.delivery_retry_s * 2 ** (attempts - 1), MAX_RETRY_S)
            due_at = utcnow() + timedelta(seconds=wait)
        if not claim.move(due_at, session, delivery_attempts=attempts):
            return  # taken over meanwhile: the other gateway's attempt is the one on record
        child.report = {**child.report, "delivered": {**child.report.get("delivered", {}), **delivered}}
        for name, url in delivered.items():
            audit.record(
                session,
                actor=actor,
                action="release.deliver",
                object=f"child:{child_id}",
                outcome="ok",
                detail={"name": name, "url": url},
            )
        for name, (url, error) in failed.items():
            audit.record(
                session,
                actor=actor,
                action="release.deliver",
                object=f"child:{child_id}",
                outcome="failed",
                detail={"name": name, "url": url, "error": error, "attempt": attempts},
            )
        if failed and due_at is None:
            child.system_logs = [
                *child.system_logs,
                *(
                    f"could not deliver {name} to {url} ({error}) in {attempts} attempts; it stays "
                    "downloadable from the gateway"
                    for name, (url, error) in failed.items()
                ),
            ]
            log.error("gave up delivering %d file(s) of child %s", len(failed), child_id)
        elif failed:
            log.warning(
                "delivery of %d file(s) of child %s failed (attempt %d); retrying at %s",
                len(failed),
                child_id,
                attempts,
                due_at,
            )


class NothingGivenUp(LookupError):
    """No delivery of this task was given up: nothing to try again."""


def redeliver(session: Session, actor: str, task_id: str) -> list[str]:
    """A federation admin's new start for the deliveries of `task_id` that were given up (the
    destination is fixed now): owed again at once, with a fresh count of attempts; audited.
    Returns the children owed again."""
    given_up = [
        child.id
        for child, _ in tasks.children_of(session, [task_id]).get(task_id, [])
        if session.execute(  # only if still given up when written: never over a claim just taken
            update(Child)
            .where(Child.id == child.id, Child.delivery_due_at.is_(None), Child.delivery_attempts > 0)
            .values(delivery_due_at=utcnow(), delivery_attempts=0)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    ]
    if not given_up:
        raise NothingGivenUp(
            "no delivery of this task was given up: nothing to try again (one under way is retried by itself)"
        )
    for child_id in given_up:
        audit.record(
            session,
            actor=actor,
            action="admin.redeliver",
            object=f"child:{child_id}",
            outcome="ok",
            detail={"task_id": task_id},
        )
    return given_up


def due(ctx: GatewayContext, limit: int = _BATCH) -> list[str]:
    """Children whose delivery is due now, oldest first."""
    with ctx.db.read() as session:
        query = (
            select(Child.id)
            .where(Child.delivery_due_at.is_not(None), Child.delivery_due_at <= utcnow())
            .order_by(Child.delivery_due_at)
            .limit(limit)
        )
        return list(session.scalars(query))


class DeliveryLoop:
    """A thread delivering what fell due (after a failure, or owed by a gateway that died)."""

    def __init__(self, ctx: GatewayContext, poll_s: float = POLL_S) -> None:
        self._ctx = ctx
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deliveries", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                owed = due(self._ctx)
            except Exception:
                log.exception("delivery loop could not read what is due; retrying in %.0f s", self._poll_s)
                owed = []
            for child_id in owed:
                if self._stop.is_set():
                    return
                try:
                    deliver(self._ctx, child_id)
                except Exception:
                    log.exception(
                        "delivery attempt on child %s failed; its claim lapses, then a retry", child_id
                    )
            self._stop.wait(self._poll_s)
