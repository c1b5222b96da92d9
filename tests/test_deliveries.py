"""Released outputs reach the buckets their TES output urls name, also when the first attempts fail:
a delivery is owed from the commit that releases the files, retried with backoff, audited at every
attempt, done once however many replicas try at the same moment, and given up (said in the child's
system log) only after `delivery_attempts`. (A gateway killed mid-delivery: test_release_kill9.py.)"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

from fivesafes_tes.audit.tables import AuditRecord
from fivesafes_tes.db.base import utcnow
from fivesafes_tes.gateway.context import app_context
from fivesafes_tes.submission import deliveries, results
from fivesafes_tes.submission.tables import Child
from tests.conftest import Gateway, results_store_settings
from tests.test_agent_api import TES, approve, event, lease, upload
from tests.waiting import wait_for

FILES = {"/outputs/summary.csv": b"region,n\nnorth,120\n", "/outputs/notes.txt": b"two regions\n"}


@pytest.fixture
def make_gateway(database_url, tmp_path, s3_endpoint):
    made = []

    def make(**overrides):
        results, outputs = s3_endpoint.store(), s3_endpoint.store()
        later = f"later-{secrets.token_hex(6)}"  # a destination bucket that does not exist yet
        settings = {"delivery_retry_s": 0.2, "delivery_attempts": 3, **overrides}
        gw = Gateway(
            database_url,
            tmp_path / f"data-{len(made)}",
            seed=not made,
            **results_store_settings(s3_endpoint, results.bucket),
            delivery_buckets=[outputs.bucket, later],
            **settings,
        )
        gw.outputs, gw.later, gw.s3 = outputs, later, s3_endpoint  # type: ignore[attr-defined]
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.close()


@pytest.fixture
def gateway(make_gateway):
    return make_gateway()


def release(gw: Gateway, bucket: str, *, attempt: bool = True, **report: object) -> tuple[str, str]:
    """A task whose two outputs ask for `bucket`, run, approved and released through the agent API;
    (task id, child id). The final event only wakes the delivery loop (none runs here unless the
    test runs the app's lifespan); with `attempt`, the first attempt is made here, as it would."""
    body = {
        "executors": [{"image": "alpine", "command": ["true"]}],
        "outputs": [{"path": path, "url": f"s3://{bucket}/study{path}"} for path in FILES],
        "tags": {"tres": "uk-tre"},
    }
    task_id = gw.client.post(f"{TES}/tasks", json=body, headers=gw.headers()).json()["id"]
    child = lease(gw)["leases"][0]["child_id"]
    for seq, stage in enumerate(("staging", "running", "checking", "awaiting_review"), start=1):
        assert event(gw, child, 1, seq, stage).status_code == 200
    assert approve(gw, child, FILES).status_code == 200
    for name, data in FILES.items():
        assert upload(gw, child, data, name=name).status_code == 200
    disclosure = {
        "files": [
            {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "decision": "approved"}
            for name, data in FILES.items()
        ]
    }
    final = event(gw, child, 1, 5, "released", report={"disclosure": disclosure, **report})
    assert final.status_code == 200, final.text
    if attempt:
        app_context(gw.app).deliverer.deliver(child)
    return task_id, child


def due(gw: Gateway) -> list[str]:
    with gw.db.read() as session:
        return deliveries.deliveries_due(session, 100)


def delivered_urls(gw: Gateway, child_id: str) -> dict[str, str | None]:
    with gw.db.read() as session:
        return {f.name: f.delivered_url for f in results.released_of(session, child_id)}


def child_row(gw: Gateway, child_id: str) -> Child:
    with gw.db.read() as session:
        return session.get(Child, child_id)


def delivery_audit(gw: Gateway) -> list[tuple[str, str]]:
    with gw.db.read() as session:
        rows = session.scalars(
            select(AuditRecord).where(AuditRecord.action == "release.deliver").order_by(AuditRecord.seq)
        )
        return [(r.outcome, r.detail["name"]) for r in rows]


def outputs_view(gw: Gateway, task_id: str) -> dict[str, str]:
    doc = gw.client.get(f"{TES}/tasks/{task_id}", params={"view": "FULL"}, headers=gw.headers()).json()
    return {o["path"]: o["url"] for o in doc["logs"][0]["outputs"]}


@contextlib.contextmanager
def serving(gw: Gateway) -> Iterator[str]:
    """The gateway's app, with its delivery loop, on a real loopback port (for the CLI)."""
    from fivesafes_tes.devstack import free_port, serve

    port = free_port()
    server, thread = serve(gw.app, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _naive(moment: datetime) -> datetime:
    """A UTC moment without its zone, as SQLite gives it back."""
    return moment.replace(tzinfo=None)


def test_a_release_delivers_each_output_once_verified(gateway):
    with gateway.client:  # the app's lifespan: its delivery loop, which the final event wakes
        task_id, child = release(gateway, gateway.outputs.bucket, attempt=False)
        wait_for(lambda: child_row(gateway, child).delivery_due_at is None, 15, "the delivery")
    for name, data in FILES.items():
        assert gateway.outputs.get_bytes(f"study{name}") == data
    assert sorted(delivery_audit(gateway)) == sorted(("ok", name) for name in FILES)
    assert outputs_view(gateway, task_id) == {
        name: f"s3://{gateway.outputs.bucket}/study{name}" for name in FILES
    }
    app_context(gateway.app).deliverer.deliver(child)  # owed nothing more: no second copy, no record
    assert len(delivery_audit(gateway)) == len(FILES)


def test_a_failed_delivery_is_retried_until_the_destination_works(gateway):
    task_id, child = release(gateway, gateway.later)  # the bucket does not exist yet
    row = child_row(gateway, child)
    assert row.delivery_attempts == 1
    assert row.delivery_due_at is not None
    assert sorted(delivery_audit(gateway)) == sorted(("failed", name) for name in FILES)
    assert all(url.startswith("http") for url in outputs_view(gateway, task_id).values())  # not there

    gateway.s3.store(gateway.later)  # the destination comes back
    with gateway.client:  # the app's delivery loop retries by itself
        wait_for(lambda: child_row(gateway, child).delivery_due_at is None, 15, "the delivery")
    assert child_row(gateway, child).delivery_attempts == 0  # done: nothing counts against it
    made = gateway.s3.store(gateway.later)
    for name, data in FILES.items():
        assert made.get_bytes(f"study{name}") == data
    assert sorted(delivery_audit(gateway)[len(FILES) :]) == sorted(("ok", name) for name in FILES)
    assert outputs_view(gateway, task_id) == {name: f"s3://{gateway.later}/study{name}" for name in FILES}
    admin = gateway.headers("fran", "federation-admin")
    done = gateway.client.post(f"/admin/v1/tasks/{task_id}/redeliver", headers=admin)
    assert done.status_code == 409  # delivered after a failure is not given up: nothing to start again


def test_a_delivery_that_keeps_failing_is_given_up_and_said_so(gateway):
    task_id, child = release(gateway, gateway.later)
    ctx = app_context(gateway.app)
    for _ in range(5):  # more passes than attempts allowed
        wait_for(
            lambda: child_row(gateway, child).delivery_due_at is None or due(gateway), 15, "the next attempt"
        )
        for owed in due(gateway):
            ctx.deliverer.deliver(owed)
    row = child_row(gateway, child)
    assert row.delivery_attempts == 3
    assert row.delivery_due_at is None
    assert [outcome for outcome, _ in delivery_audit(gateway)] == ["failed"] * 3 * len(FILES)
    for name in FILES:
        assert any(f"could not deliver {name}" in line and "3 attempts" in line for line in row.system_logs)
    # the files themselves stay the researcher's to download
    listing = gateway.client.get(f"/api/v1/tasks/{task_id}/results", headers=gateway.headers()).json()
    assert sorted(f["name"] for f in listing["tres"][0]["files"]) == sorted(FILES)

    # once the destination is fixed, a federation admin starts the delivery again
    url = f"/admin/v1/tasks/{task_id}/redeliver"
    assert gateway.client.post(url, headers=gateway.headers("alice")).status_code == 403
    admin = gateway.headers("fran", "federation-admin")
    assert gateway.client.post("/admin/v1/tasks/nope/redeliver", headers=admin).status_code == 404
    gateway.s3.store(gateway.later)
    with serving(gateway) as base:  # by the CLI, over HTTP
        from typer.testing import CliRunner

        from fivesafes_tes.cli import app

        token = gateway.token("fran", "federation-admin")
        result = CliRunner().invoke(app, ["admin", "redeliver", task_id, "--url", base, "--token", token])
        assert result.exit_code == 0, result.output
        assert "owed again for 1 TRE(s)" in result.output
        wait_for(lambda: child_row(gateway, child).delivery_due_at is None, 15, "the delivery")
    assert sorted(e for e in delivery_audit(gateway) if e[0] == "ok") == sorted(("ok", n) for n in FILES)
    refused = gateway.client.post(url, headers=admin)  # nothing given up any more
    assert refused.status_code == 409
    assert "nothing to try again" in refused.json()["detail"]
    with gateway.db.read() as session:
        [record] = session.scalars(select(AuditRecord).where(AuditRecord.action == "admin.redeliver"))
    assert (record.actor, record.object) == ("fran", f"child:{child}")


def test_replicas_trying_one_delivery_at_once_copy_it_once(gateway, monkeypatch):
    from fivesafes_tes.egress.store import ObjectStore

    _, child = release(gateway, gateway.later)
    gateway.s3.store(gateway.later)
    real, copies = ObjectStore.copy_verified, []

    def counted(self, *args, **kwargs):
        copies.append(args[1])  # an overwrite in S3 leaves no trace: count the copies made
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ObjectStore, "copy_verified", counted)
    with gateway.db.write() as session:  # due now, as if its retry time had come
        session.execute(update(Child).where(Child.id == child).values(delivery_due_at=utcnow()))
    ctx = app_context(gateway.app)
    start, errors = threading.Barrier(4), []

    def replica() -> None:
        start.wait()
        try:
            ctx.deliverer.deliver(child)
        except Exception as exc:  # noqa: BLE001 - a replica that crashed must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    assert errors == []
    assert len(copies) == len(FILES)
    assert sorted(e for e in delivery_audit(gateway) if e[0] == "ok") == sorted(("ok", n) for n in FILES)
    assert child_row(gateway, child).delivery_due_at is None


def test_a_delivery_held_by_a_replica_that_died_is_taken_over_when_its_claim_lapses(gateway):
    _, child = release(gateway, gateway.later)
    gateway.s3.store(gateway.later)
    ctx = app_context(gateway.app)
    with gateway.db.write() as session:  # another replica claimed it a moment ago, then died
        claimed_until = utcnow() + timedelta(seconds=1)
        session.execute(update(Child).where(Child.id == child).values(delivery_due_at=claimed_until))
    ctx.deliverer.deliver(child)
    assert [e for e in delivery_audit(gateway) if e[0] == "ok"] == []  # not while the claim holds
    wait_for(lambda: bool(due(gateway)), 5, "the dead replica's claim to lapse")
    ctx.deliverer.deliver(child)
    assert sorted(e for e in delivery_audit(gateway) if e[0] == "ok") == sorted(("ok", n) for n in FILES)


def test_a_repeated_final_event_owes_nothing_more(gateway):
    _, child = release(gateway, gateway.outputs.bucket)
    assert len(delivery_audit(gateway)) == len(FILES)
    again = event(gateway, child, 1, 6, "released", report=child_row(gateway, child).report)
    assert again.status_code == 200
    assert child_row(gateway, child).delivery_due_at is None
    assert len(delivery_audit(gateway)) == len(FILES)


def test_a_long_copy_keeps_its_claim_and_nobody_else_starts_the_delivery(make_gateway, monkeypatch):
    from fivesafes_tes.egress.store import ObjectStore

    gateway = make_gateway(delivery_claim_s=0.3)
    _, child = release(gateway, gateway.later)  # fails: the bucket is missing; retried below
    gateway.s3.store(gateway.later)
    real, copying, finish, copies = ObjectStore.copy_verified, threading.Event(), threading.Event(), []

    def slow(self, *args, **kwargs):
        copying.set()
        copies.append(args[1])
        assert finish.wait(30)  # the copy outlasts the claim: only its renewal keeps it
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ObjectStore, "copy_verified", slow)
    ctx = app_context(gateway.app)
    wait_for(lambda: bool(due(gateway)), 15, "the delivery to fall due")
    first = threading.Thread(target=ctx.deliverer.deliver, args=(child,))
    first.start()
    assert copying.wait(10)
    claimed_until = _naive(child_row(gateway, child).delivery_due_at)
    wait_for(lambda: _naive(utcnow()) > claimed_until, 10, "the first claim's end to pass")
    ctx.deliverer.deliver(child)  # another replica's attempt: the claim is still held
    finish.set()
    first.join(30)
    assert len(copies) == len(FILES)  # each file copied once: the second attempt never started
    assert sorted(e for e in delivery_audit(gateway) if e[0] == "ok") == sorted(("ok", n) for n in FILES)
    assert child_row(gateway, child).delivery_due_at is None


def test_an_attempt_whose_claim_was_taken_over_records_nothing(gateway, monkeypatch):
    from fivesafes_tes.egress.store import ObjectStore

    _, child = release(gateway, gateway.later)
    gateway.s3.store(gateway.later)
    real = ObjectStore.copy_verified
    theirs = utcnow() + timedelta(hours=1)

    def stalled(self, *args, **kwargs):
        # meanwhile this gateway stalled, its claim lapsed, and another replica claimed the delivery
        with gateway.db.write() as session:
            session.execute(update(Child).where(Child.id == child).values(delivery_due_at=theirs))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ObjectStore, "copy_verified", stalled)
    ctx = app_context(gateway.app)
    wait_for(lambda: bool(due(gateway)), 15, "the delivery to fall due")
    audited, logged = delivery_audit(gateway), child_row(gateway, child).system_logs
    ctx.deliverer.deliver(child)
    row = child_row(gateway, child)
    assert delivery_audit(gateway) == audited
    assert row.system_logs == logged
    assert row.delivery_attempts == 1
    assert set(delivered_urls(gateway, child).values()) == {None}
    assert (
        abs((row.delivery_due_at.replace(tzinfo=None) - theirs.replace(tzinfo=None)).total_seconds()) < 1e-3
    )
    assert [e for e in delivery_audit(gateway) if e[0] == "ok"] == []  # the other replica's to record


def test_a_gateway_that_delivers_nowhere_says_so_when_asked_to_redeliver(database_url, tmp_path):
    plain = Gateway(database_url, tmp_path / "plain")
    try:
        answer = plain.client.post(
            "/admin/v1/tasks/any/redeliver", headers=plain.headers("fran", "federation-admin")
        )
        assert answer.status_code == 409
        assert "FIVESAFES_DELIVERY_BUCKETS" in answer.json()["detail"]
    finally:
        plain.close()


def test_an_agent_report_cannot_say_where_outputs_were_delivered(gateway):
    """What was delivered where is the gateway's own record, not anything an agent reports."""
    claimed = dict.fromkeys(FILES, "s3://elsewhere/taken")
    task_id, child = release(gateway, gateway.later, delivered=claimed)  # fails: the bucket is missing
    assert all(url.startswith("http") for url in outputs_view(gateway, task_id).values())
    assert set(delivered_urls(gateway, child).values()) == {None}
    assert child_row(gateway, child).delivery_due_at is not None  # still owed
