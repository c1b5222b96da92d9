"""Delivery of released outputs where their TES output urls say, retried until it succeeds.

When a child ends with files released and some TES output `url` names a bucket this gateway may
write to (`delivery_buckets`) or a file:// path under its folder for them (`file_output_root`,
written by `submission.file_outputs`), the same transaction that ends it sets the child's `delivery_due_at`
(`results.owe_delivery`): the delivery is owed from that moment, whatever happens to this process.
The route then wakes this replica's delivery loop, which also takes up whatever falls due later.
An attempt first claims the child by moving `delivery_due_at` ahead (`delivery_claim_s`) with a
conditional update, and a thread keeps moving it while the attempt runs, so two replicas never work
on one child at once and one that died mid-delivery is taken over once its claim lapses. Every write
of an attempt is conditional on still holding the claim. Each copy is verified against the SHA-256
recorded at the TRE, and each delivered file records its url (`ReleasedFile.delivered_url`). A failed
attempt is audited and retried after `delivery_retry_s`, doubling up to an hour, for
`delivery_attempts`; then the child's system log says which files were not delivered (a federation
admin may start it again: `results.redeliver`). They remain downloadable from the gateway throughout.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import update

from fivesafes_tes import audit, failpoints
from fivesafes_tes.db.base import utcnow
from fivesafes_tes.egress.store import safe_key
from fivesafes_tes.submission import file_outputs, results
from fivesafes_tes.submission.tables import Child, ReleasedFile, Tre

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from fivesafes_tes.gateway.context import GatewayContext

log = logging.getLogger(__name__)

POLL_S = 5.0  # how often each replica looks for deliveries that fell due, at most
MAX_RETRY_S = 3600.0  # the backoff doubles up to this
_BATCH = 20


def _set_if(session: Session, child_id: str, *conditions: Any, **values: Any) -> bool:
    """Update the child's row only where `conditions` hold; whether it did."""
    statement = update(Child).where(Child.id == child_id, *conditions).values(**values)
    return session.execute(statement.execution_options(synchronize_session=False)).rowcount == 1


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
            due = (Child.delivery_due_at.is_not(None), Child.delivery_due_at <= now)
            if not _set_if(session, child_id, *due, delivery_due_at=until):
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
        if session is not None:  # the caller's transaction: the claim ends with it
            self.lost = not _set_if(
                session, self._child_id, Child.delivery_due_at == self.until, delivery_due_at=until, **values
            )
            return not self.lost
        with self._ctx.db.write() as own:
            self.lost = not _set_if(
                own, self._child_id, Child.delivery_due_at == self.until, delivery_due_at=until, **values
            )
        if not self.lost and until is not None:
            self.until = until  # only once committed: a failed commit leaves the claim as it was
        return not self.lost

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
            actor = f"agent:{session.get(Tre, child.tre_id).name}"
            targets = [
                (file.id, file.name, file.key, file.sha256, url)
                for file, url in results.delivery_targets(session, child, ctx.destinations)
                if file.delivered_url != url
            ]
        delivered: dict[int, tuple[str, str]] = {}
        failed: dict[str, tuple[str, str]] = {}
        for file_id, name, key, sha256, url in targets:
            if claim.lost:
                break
            try:
                _copy(ctx, key, sha256, url)
            except Exception as exc:  # noqa: BLE001 - the store refused, was down, or the bytes differ
                failed[name] = (url, type(exc).__name__)
                continue
            delivered[file_id] = (name, url)
            failpoints.reach("release.delivered")
    finally:
        claim.release()
    if not claim.lost:
        _record(ctx, claim, child_id, actor, delivered, failed)
    if claim.lost:
        log.warning(
            "another gateway took over the delivery of child %s; this attempt is not recorded", child_id
        )


def _copy(ctx: GatewayContext, key: str, sha256: str, url: str) -> None:
    """One released file from the results store to `url`, verified against its SHA-256."""
    store = ctx.results_store
    if file_outputs.is_file_url(url):
        folder = ctx.destinations.folder
        if folder is None:
            raise file_outputs.UnsafeDestination("this gateway writes no file:// outputs")
        file_outputs.write(folder, url, lambda out: store.copy_to(key, out, expect_sha256=sha256), sha256)
        return
    bucket, _, path = url[5:].partition("/")
    store.with_bucket(bucket).copy_verified(store, key, safe_key(path), sha256)


def _record(
    ctx: GatewayContext,
    claim: _Claim,
    child_id: str,
    actor: str,
    delivered: dict[int, tuple[str, str]],
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
        for file_id, (_, url) in delivered.items():
            session.execute(update(ReleasedFile).where(ReleasedFile.id == file_id).values(delivered_url=url))
        outcomes = [("ok", name, {"url": url}) for name, url in delivered.values()]
        outcomes += [
            ("failed", name, {"url": url, "error": e, "attempt": attempts})
            for name, (url, e) in failed.items()
        ]
        for outcome, name, detail in outcomes:
            audit.record(
                session,
                actor=actor,
                action="release.deliver",
                object=f"child:{child_id}",
                outcome=outcome,
                detail={"name": name, **detail},
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


class DeliveryLoop:
    """A thread delivering what is owed: woken by the routes that owe a delivery, and looking every
    `min(POLL_S, delivery_retry_s)` for retries and for deliveries a gateway that died still owed.
    Copies run here, never in the request threads."""

    def __init__(self, ctx: GatewayContext, poll_s: float | None = None) -> None:
        self._ctx = ctx
        self._poll_s = poll_s if poll_s is not None else min(POLL_S, ctx.settings.delivery_retry_s)
        self._stop = threading.Event()
        self._woken = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deliveries", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Something is owed now: look at once."""
        self._woken.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._woken.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._woken.clear()
            try:
                with self._ctx.db.read() as session:
                    owed = results.deliveries_due(session, _BATCH)
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
            if len(owed) < _BATCH:  # a full batch: more may be due already
                self._woken.wait(self._poll_s)
