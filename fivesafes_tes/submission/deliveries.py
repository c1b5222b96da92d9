"""Delivery of released outputs where their TES output urls say, retried until it succeeds.

When a child ends with files released and some TES output `url` names a bucket this gateway may
write to (`delivery_buckets`) or a file:// path under its folder for them (`file_output_root`,
written by `submission.file_outputs`), the same transaction that ends it sets the child's `delivery_due_at`
(`Deliverer.owe`): the delivery is owed from that moment, whatever happens to this process.
The route then wakes this replica's `DeliveryLoop`, which also takes up whatever falls due later.
An attempt first claims the child by moving `delivery_due_at` ahead (`delivery_claim_s`) with a
conditional update, and a thread keeps moving it while the attempt runs, so two replicas never work
on one child at once and one that died mid-delivery is taken over once its claim lapses. Every write
of an attempt is conditional on still holding the claim. Each copy is verified against the SHA-256
recorded at the TRE, and each delivered file records its url (`ReleasedFile.delivered_url`). A failed
attempt is audited and retried after `delivery_retry_s`, doubling up to `delivery_retry_cap_s`, for
`delivery_attempts`; then the child's system log says which files were not delivered (a federation
admin may start it again: `redeliver`). They remain downloadable from the gateway throughout.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, BinaryIO, cast

from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from fivesafes_tes import audit, failpoints
from fivesafes_tes.db import Database
from fivesafes_tes.db.base import utcnow
from fivesafes_tes.egress.keys import safe_key
from fivesafes_tes.egress.store import ObjectStore
from fivesafes_tes.submission import file_outputs
from fivesafes_tes.submission.researcher_view import VISIBLE_AFTER
from fivesafes_tes.submission.results import released_of
from fivesafes_tes.submission.tables import Child, ReleasedFile, Task, Tre
from fivesafes_tes.tes import outputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Destinations:
    """Where this gateway delivers released outputs besides its results store: s3:// urls naming one
    of `buckets` (on the results store's endpoint) and file:// urls, under `folder` only."""

    buckets: frozenset[str] = frozenset()
    folder: str | None = None

    def __bool__(self) -> bool:
        return bool(self.buckets) or self.folder is not None

    def accepts(self, url: str) -> bool:
        if url.startswith("s3://"):
            return url[5:].split("/", 1)[0] in self.buckets
        return self.folder is not None and file_outputs.is_file_url(url)


def destinations(
    task_document: dict[str, Any], released: list[ReleasedFile], where: Destinations
) -> dict[str, str]:
    """Where each released output goes besides the results store: name -> url, for outputs whose TES
    `url` is one this gateway delivers to, by the rules that collected it (`tes.outputs.claim`): a
    wildcard's file keeps its path below `path_prefix`, a DIRECTORY's its path below it, appended to
    the output's url."""
    out: dict[str, str] = {}
    for file in released:
        if file.kind != "output":
            continue
        for spec in task_document.get("outputs", []):
            url = spec.get("url", "")
            below = outputs.claim(spec, file.name) if where.accepts(url) else None
            if below is not None:
                out[file.name] = url.rstrip("/") + "/" + below if below else url
                break
    return out


class NothingGivenUp(LookupError):
    """No delivery of this task was given up: nothing to try again."""


def delivery_targets(session: Session, child: Child, where: Destinations) -> list[tuple[ReleasedFile, str]]:
    """The child's released outputs whose TES url is one `where` delivers to, each with that url; none
    unless the child's files are the researcher's (VISIBLE_AFTER)."""
    if not where or child.stage not in VISIBLE_AFTER:
        return []
    task = session.get_one(Task, child.task_id)
    files = released_of(session, child.id)
    urls = destinations(task.document, files, where)
    return [(file, urls[file.name]) for file in files if file.name in urls]


def owe_delivery(session: Session, child: Child, where: Destinations) -> bool:
    """In the transaction that releases `child`'s files: owe a delivery if some target is not yet
    delivered there, unless one is owed or was given up already (so a repeated final event changes
    nothing). Returns whether one is owed now."""
    if child.delivery_due_at is not None or child.delivery_attempts:
        return child.delivery_due_at is not None
    if not any(file.delivered_url != url for file, url in delivery_targets(session, child, where)):
        return False
    child.delivery_due_at = utcnow()
    return True


def redeliver(session: Session, actor: str, task_id: str) -> list[str]:
    """A federation admin's new start for the deliveries of `task_id` that were given up (the
    destination is fixed now): owed again at once with a fresh count of attempts, never over a claim
    just taken; audited. Returns the children owed again."""
    given_up = list(
        session.scalars(
            update(Child)
            .where(Child.task_id == task_id, Child.delivery_due_at.is_(None), Child.delivery_attempts > 0)
            .values(delivery_due_at=utcnow(), delivery_attempts=0)
            .returning(Child.id)
            .execution_options(synchronize_session=False)
        )
    )
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


def deliveries_due(session: Session, limit: int) -> list[str]:
    """Children whose delivery is due now, oldest first."""
    query = (
        select(Child.id)
        .where(Child.delivery_due_at.is_not(None), Child.delivery_due_at <= utcnow())
        .order_by(Child.delivery_due_at)
        .limit(limit)
    )
    return list(session.scalars(query))


_BATCH = 20


@dataclass(frozen=True)
class Schedule:
    """How a gateway paces deliveries (its `delivery_*` settings)."""

    attempts: int = 20
    retry_s: float = 30.0
    claim_s: float = 300.0
    retry_cap_s: float = 3600.0  # the backoff doubles up to this
    poll_s: float = 5.0  # how often each replica looks for deliveries that fell due, at most


def _set_if(session: Session, child_id: str, *conditions: Any, **values: Any) -> bool:
    """Update the child's row only where `conditions` hold; whether it did."""
    statement = update(Child).where(Child.id == child_id, *conditions).values(**values)
    result = session.execute(statement.execution_options(synchronize_session=False))
    return cast("CursorResult[Any]", result).rowcount == 1


class _Claim:
    """This gateway's hold on one child's delivery: `delivery_due_at` set to a moment only it knows,
    pushed ahead by a thread while the attempt runs. Another gateway may take the delivery over
    only once that moment has passed; if one did (this process stalled), `lost` is set and this
    attempt records nothing."""

    def __init__(self, db: Database, claim_s: float, child_id: str, until: datetime) -> None:
        self._db, self._claim_s, self._child_id, self.until = db, claim_s, child_id, until
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hold, name=f"delivery-{child_id}", daemon=True)

    @classmethod
    def take(cls, db: Database, claim_s: float, child_id: str) -> _Claim | None:
        """The child's delivery if it is due and nobody holds it: one conditional update."""
        now = utcnow()
        until = now + timedelta(seconds=claim_s)
        with db.write() as session:
            due = (Child.delivery_due_at.is_not(None), Child.delivery_due_at <= now)
            if not _set_if(session, child_id, *due, delivery_due_at=until):
                return None
        claim = cls(db, claim_s, child_id, until)
        claim._thread.start()
        return claim

    def _hold(self) -> None:
        while not self._stop.wait(self._claim_s / 3):
            try:
                self.move(utcnow() + timedelta(seconds=self._claim_s))
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
        with self._db.write() as own:
            self.lost = not _set_if(
                own, self._child_id, Child.delivery_due_at == self.until, delivery_due_at=until, **values
            )
        if not self.lost and until is not None:
            self.until = until  # only once committed: a failed commit leaves the claim as it was
        return not self.lost

    def release(self) -> None:
        self._stop.set()
        self._thread.join()


class Deliverer:
    """This gateway's deliveries: from its results store to the destinations it may write (`where`),
    paced by `schedule`. Routes owe deliveries through it; its loop makes them."""

    def __init__(self, db: Database, store: ObjectStore, where: Destinations, schedule: Schedule) -> None:
        self.db, self.store, self.where, self.schedule = db, store, where, schedule

    def owe(self, session: Session, child: Child) -> bool:
        """In the transaction that releases `child`'s files: whether a delivery is owed now."""
        return owe_delivery(session, child, self.where)

    def deliver(self, child_id: str) -> None:
        """One attempt at the child's owed delivery, if it is due and this gateway can claim it."""
        claim = _Claim.take(self.db, self.schedule.claim_s, child_id)
        if claim is None:
            return
        try:
            with self.db.read() as session:
                child = session.get_one(Child, child_id)
                actor = f"agent:{session.get_one(Tre, child.tre_id).name}"
                targets = [
                    (file.id, file.name, file.key, file.sha256, url)
                    for file, url in delivery_targets(session, child, self.where)
                    if file.delivered_url != url
                ]
            delivered: dict[int, tuple[str, str]] = {}
            failed: dict[str, tuple[str, str]] = {}
            for file_id, name, key, sha256, url in targets:
                if claim.lost:
                    break
                try:
                    self._copy(key, sha256, url)
                except Exception as exc:  # noqa: BLE001 - the store refused, was down, or the bytes differ
                    failed[name] = (url, type(exc).__name__)
                    continue
                delivered[file_id] = (name, url)
                failpoints.reach("release.delivered")
        finally:
            claim.release()
        if not claim.lost:
            self._record(claim, child_id, actor, delivered, failed)
        if claim.lost:
            log.warning(
                "another gateway took over the delivery of child %s; this attempt is not recorded", child_id
            )

    def _copy(self, key: str, sha256: str, url: str) -> None:
        """One released file from the results store to `url`, verified against its SHA-256."""
        store = self.store
        if file_outputs.is_file_url(url):
            folder = self.where.folder
            if folder is None:
                raise file_outputs.UnsafeDestination("this gateway writes no file:// outputs")

            def fetch(out: BinaryIO) -> None:
                store.copy_to(key, out, expect_sha256=sha256)

            file_outputs.write(folder, url, fetch, sha256)
            return
        bucket, _, path = url[5:].partition("/")
        store.with_bucket(bucket).copy_verified(store, key, safe_key(path), sha256)

    def _record(
        self,
        claim: _Claim,
        child_id: str,
        actor: str,
        delivered: dict[int, tuple[str, str]],
        failed: dict[str, tuple[str, str]],
    ) -> None:
        """What the attempt did, if this gateway still holds the delivery: done, a retry at a doubled
        interval (up to `retry_cap_s`), or, after `delivery_attempts`, given up and said so."""
        schedule = self.schedule
        with self.db.write() as session:
            child = session.get_one(Child, child_id)
            attempts = child.delivery_attempts + 1 if failed else 0  # done: nothing counts against it
            if not failed or attempts >= schedule.attempts:
                due_at = None
            else:
                wait = min(schedule.retry_s * 2 ** (attempts - 1), schedule.retry_cap_s)
                due_at = utcnow() + timedelta(seconds=wait)
            if not claim.move(due_at, session, delivery_attempts=attempts):
                return  # taken over meanwhile: the other gateway's attempt is the one on record
            for file_id, (_, url) in delivered.items():
                session.execute(
                    update(ReleasedFile).where(ReleasedFile.id == file_id).values(delivered_url=url)
                )
            outcomes: list[tuple[str, str, dict[str, object]]] = [
                ("ok", name, {"url": url}) for name, url in delivered.values()
            ]
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
    `min(delivery_poll_s, delivery_retry_s)` for retries and for deliveries a gateway that died still owed.
    Copies run here, never in the request threads."""

    def __init__(self, deliverer: Deliverer, poll_s: float | None = None) -> None:
        self._deliverer = deliverer
        self._poll_s = (
            poll_s if poll_s is not None else min(deliverer.schedule.poll_s, deliverer.schedule.retry_s)
        )
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
                with self._deliverer.db.read() as session:
                    owed = deliveries_due(session, _BATCH)
            except Exception:
                log.exception("delivery loop could not read what is due; retrying in %.0f s", self._poll_s)
                owed = []
            for child_id in owed:
                if self._stop.is_set():
                    return
                try:
                    self._deliverer.deliver(child_id)
                except Exception:
                    log.exception(
                        "delivery attempt on child %s failed; its claim lapses, then a retry", child_id
                    )
            if len(owed) < _BATCH:  # a full batch: more may be due already
                self._woken.wait(self._poll_s)
