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
from fivesafes_tes.submission import results
from fivesafes_tes.submission.tables import Child, ReleasedFile, Task, Tre

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from fivesafes_tes.gateway.app import GatewayContext

log = logging.getLogger(__name__)

POLL_S = 5.0  # how often each replica looks for deliveries that fell due
_BATCH = 20


def schedule(session: Session, child: Child, buckets: list[str]) -> bool:
    """In the transaction that releases `child`'s files: owe a delivery if any output url names one
    of `buckets`. Returns whether one is owed."""
    if not buckets:
        return False
    task = session.get(Task, child.task_id)
    files = list(session.scalars(select(ReleasedFile).where(ReleasedFile.child_id == child.id)))
    if task is None or not results.destinations(task.document, files, set(buckets)):
        return False
    child.delivery_due_at = utcnow()
    return True


def _claim(ctx: GatewayContext, child_id: str, now: datetime) -> bool:
    """Take the child's delivery if it is due and nobody holds it: one conditional update."""
    until = now + timedelta(seconds=ctx.settings.delivery_claim_s)
    with ctx.db.write() as session:
        claimed = session.execute(
            update(Child)
            .where(Child.id == child_id, Child.delivery_due_at.is_not(None), Child.delivery_due_at <= now)
            .values(delivery_due_at=until)
            .execution_options(synchronize_session=False)
        )
        return claimed.rowcount == 1


def _renew(ctx: GatewayContext, child_id: str) -> None:
    until = utcnow() + timedelta(seconds=ctx.settings.delivery_claim_s)
    with ctx.db.write() as session:
        session.execute(
            update(Child)
            .where(Child.id == child_id, Child.delivery_due_at.is_not(None))
            .values(delivery_due_at=until)
            .execution_options(synchronize_session=False)
        )


def deliver(ctx: GatewayContext, child_id: str) -> None:
    """One attempt at the child's owed delivery, if it is due and this gateway can claim it."""
    store = ctx.results_store
    if store is None or not _claim(ctx, child_id, utcnow()):
        return
    with ctx.db.read() as session:
        child = session.get(Child, child_id)
        task = session.get(Task, child.task_id)
        tre = session.get(Tre, child.tre_id)
        files = list(
            session.scalars(
                select(ReleasedFile).where(ReleasedFile.child_id == child_id).order_by(ReleasedFile.id)
            )
        )
        targets = results.destinations(task.document, files, set(ctx.settings.delivery_buckets))
        done = dict(child.report.get("delivered", {}))
    delivered: dict[str, str] = {}
    failed: dict[str, tuple[str, str]] = {}
    for file in files:
        url = targets.get(file.name)
        if url is None or done.get(file.name) == url:
            continue
        bucket, _, key = url[5:].partition("/")
        try:
            store.with_bucket(bucket).copy_verified(store, file.key, safe_key(key), file.sha256)
        except Exception as exc:  # noqa: BLE001 - the store refused, was down, or the bytes differ: retried
            failed[file.name] = (url, type(exc).__name__)
            continue
        delivered[file.name] = url
        failpoints.reach("release.delivered")
        _renew(ctx, child_id)
    _record(ctx, child_id, f"agent:{tre.name}", delivered, failed)


def _record(
    ctx: GatewayContext,
    child_id: str,
    actor: str,
    delivered: dict[str, str],
    failed: dict[str, tuple[str, str]],
) -> None:
    settings = ctx.settings
    with ctx.db.write() as session:
        child = session.get(Child, child_id)
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
        if not failed:
            child.delivery_due_at = None
            return
        child.delivery_attempts += 1
        attempts = child.delivery_attempts
        for name, (url, error) in failed.items():
            audit.record(
                session,
                actor=actor,
                action="release.deliver",
                object=f"child:{child_id}",
                outcome="failed",
                detail={"name": name, "url": url, "error": error, "attempt": attempts},
            )
        if attempts >= settings.delivery_attempts:
            child.delivery_due_at = None
            child.system_logs = [
                *child.system_logs,
                *(
                    f"could not deliver {name} to {url} ({error}) in {attempts} attempts; it stays "
                    "downloadable from the gateway"
                    for name, (url, error) in failed.items()
                ),
            ]
            log.error("gave up delivering %d file(s) of child %s", len(failed), child_id)
        else:
            wait = settings.delivery_retry_s * 2 ** (attempts - 1)
            child.delivery_due_at = utcnow() + timedelta(seconds=wait)
            log.warning(
                "delivery of %d file(s) of child %s failed (attempt %d); retrying in %.0f s",
                len(failed),
                child_id,
                attempts,
                wait,
            )


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
                for child_id in due(self._ctx):
                    if self._stop.is_set():
                        return
                    deliver(self._ctx, child_id)
            except Exception:
                log.exception("delivery loop pass failed; retrying in %.0f s", self._poll_s)
            self._stop.wait(self._poll_s)
