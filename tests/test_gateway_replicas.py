"""The gateway as real processes: two replicas on one PostgreSQL, and `kill -9` of the gateway.

DESIGN "Scale": the gateway is stateless over its database, so replicas lease work without ever
handing a child out twice (row locks, SKIP LOCKED). RELIABILITY 8 and 10, gateway side: a SIGKILL at
any point, then a restart on the same database, loses no task and duplicates none; replayed events
change nothing; an in-flight lease is re-offered with attempt+1 once its TTL passes and the old
attempt is refused.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

from fivesafes_tes.audit.tables import AuditRecord
from fivesafes_tes.auth import DevIssuer
from fivesafes_tes.db import Database
from fivesafes_tes.devstack import free_port, seed_federation
from fivesafes_tes.submission.tables import Child
from tests.conftest import _fresh_pg_database
from tests.processes import GatewayProcess

TES = "/ga4gh/tes/v1"
AGENT = "/agent/v1"
AUDIENCE = "fivesafes-tes"
LEASE_TTL_S = 10  # the second kill must land before the first leases expire, also on a busy machine


def _bearer(issuer: DevIssuer, user: str, role: str, **claims: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.issue(user, [role], audience=AUDIENCE, ttl_s=3600, **claims)}"}


def _task(name: str, tre: str = "uk-tre") -> dict:
    return {"name": name, "executors": [{"image": "alpine", "command": ["true"]}], "tags": {"tres": tre}}


def _submit(http: httpx.Client, base: str, name: str, key: str | None = None, tre: str = "uk-tre") -> str:
    headers = {"Idempotency-Key": key} if key else {}
    response = http.post(f"{base}{TES}/tasks", json=_task(name, tre), headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def _listed(http: httpx.Client, base: str) -> list[dict]:
    response = http.get(f"{base}{TES}/tasks", params={"view": "BASIC", "page_size": 2047})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "next_page_token" not in body
    return body["tasks"]


def _child(task: dict) -> tuple[str, str, int]:
    """(TRE, stage, attempt) of a listed task's only child."""
    [log] = task["logs"]
    return log["metadata"]["tre"], log["metadata"]["stage"], int(log["metadata"]["attempt"])


def _lease(http: httpx.Client, base: str, *, wait_s: float = 0, most: int = 100) -> list[dict]:
    response = http.post(f"{base}{AGENT}/leases", json={"wait_s": wait_s, "max": most})
    assert response.status_code == 200, response.text
    return response.json()["leases"]


def _event(http: httpx.Client, base: str, child: str, attempt: int, seq: int, stage: str) -> httpx.Response:
    return http.post(
        f"{base}{AGENT}/children/{child}/events", json={"attempt": attempt, "seq": seq, "stage": stage}
    )


def _lease_audits(url: str) -> collections.Counter:
    db = Database(url)
    try:
        with db.read() as session:
            return collections.Counter(
                session.scalars(select(AuditRecord.object).where(AuditRecord.action == "child.lease"))
            )
    finally:
        db.dispose()


# --- two replicas, one PostgreSQL ---------------------------------------------------------------


@pytest.fixture
def pg_url(_pg_template: str) -> Iterator[str]:
    yield from _fresh_pg_database(_pg_template)


N_TASKS = 60
N_AGENTS = 8


def test_two_replicas_on_one_postgresql_never_lease_a_child_twice(pg_url, tmp_path):
    db = Database(pg_url)
    seed_federation(db)
    db.dispose()
    data_dir = tmp_path / "data"
    ports = [free_port(), free_port()]
    public_url = f"http://127.0.0.1:{ports[0]}"  # the same for both, as behind one load balancer
    issuer = DevIssuer(data_dir / "dev-issuer", public_url + "/dev-issuer")  # the key both replicas load
    replicas = [
        GatewayProcess(
            database_url=pg_url,
            data_dir=data_dir,
            port=port,
            public_url=public_url,
            log=tmp_path / f"gateway-{n}.log",
            lease_ttl_s=600,  # no lease may expire here: a re-offer would be a legitimate second grant
        )
        for n, port in enumerate(ports)
    ]
    urls = [r.url for r in replicas]
    alice = httpx.Client(headers=_bearer(issuer, "alice", "researcher"), timeout=30)
    agent_headers = _bearer(issuer, "agent-uk-tre", "tre-agent", tre="uk-tre")
    try:
        for replica in replicas:
            replica.spawn()
        for replica in replicas:
            replica.wait_ready()

        # Half the work waits before the agents start, so their first polls contend for the same rows;
        # the other half arrives while they long-poll.
        submitted = [_submit(alice, urls[n % 2], f"job-{n}") for n in range(N_TASKS // 2)]

        grants: list[tuple[str, int, dict]] = []  # (replica url, agent, grant)
        errors: list[BaseException] = []
        lock = threading.Lock()
        done = threading.Event()
        deadline = time.monotonic() + 40

        def agent(n: int) -> None:
            try:
                with httpx.Client(headers=agent_headers, timeout=30) as http:
                    turn = n
                    while not done.is_set() and time.monotonic() < deadline:
                        base = urls[turn % 2]
                        turn += 1
                        got = _lease(http, base, wait_s=1, most=1 + n % 3)
                        with lock:
                            grants.extend((base, n, g) for g in got)
                            if len({g["child_id"] for _, _, g in grants}) >= N_TASKS:
                                done.set()
            except BaseException as exc:  # noqa: BLE001  reported by the main thread
                errors.append(exc)
                done.set()

        agents = [threading.Thread(target=agent, args=(n,), daemon=True) for n in range(N_AGENTS)]
        for thread in agents:
            thread.start()
        submitted += [_submit(alice, urls[n % 2], f"job-{n}") for n in range(N_TASKS // 2, N_TASKS)]
        for thread in agents:
            thread.join(timeout=60)
        assert not errors, errors
        assert done.is_set(), f"only {len(grants)} grants before the deadline"

        # Nothing is left on either replica: every child was handed out.
        with httpx.Client(headers=agent_headers, timeout=30) as http:
            assert [_lease(http, base) for base in urls] == [[], []]

        per_child = collections.Counter(g["child_id"] for _, _, g in grants)
        duplicates = {
            c: [(b, a, g["attempt"]) for b, a, g in grants if g["child_id"] == c]
            for c, n in per_child.items()
            if n > 1
        }
        assert not duplicates, f"children leased more than once: {duplicates}"
        assert len(per_child) == N_TASKS
        assert sorted(g["task_id"] for _, _, g in grants) == sorted(submitted)
        assert {g["attempt"] for _, _, g in grants} == {1}
        assert all(g["stage"] == "leased" for _, _, g in grants)
        # The test means something only if both replicas and several agents handed out work.
        assert {b for b, _, _ in grants} == set(urls)
        assert len({a for _, a, _ in grants}) > 1

        # What the database holds agrees: one lease per child, attempt 1, one audit record each.
        db = Database(pg_url)
        try:
            with db.read() as session:
                rows = session.execute(select(Child.id, Child.attempt, Child.stage)).all()
        finally:
            db.dispose()
        assert sorted(r.id for r in rows) == sorted(per_child)
        assert {(r.attempt, r.stage) for r in rows} == {(1, "leased")}
        audits = _lease_audits(pg_url)
        assert audits == collections.Counter({f"child:{c}": 1 for c in per_child})
        assert {_child(t) for t in _listed(alice, urls[1])} == {("uk-tre", "leased", 1)}
    finally:
        alice.close()
        for replica in replicas:
            replica.stop()


# --- kill -9 of the gateway -------------------------------------------------------------------


def test_gateway_kill_9_loses_nothing_duplicates_nothing_and_reoffers_leases(database_url, tmp_path):
    db = Database(database_url)
    seed_federation(db)
    db.dispose()
    data_dir = tmp_path / "data"
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    issuer = DevIssuer(data_dir / "dev-issuer", public_url + "/dev-issuer")
    gateway = GatewayProcess(
        database_url=database_url,
        data_dir=data_dir,
        port=port,
        public_url=public_url,
        log=tmp_path / "gateway.log",
        lease_ttl_s=LEASE_TTL_S,
    )
    base = gateway.url
    alice = httpx.Client(headers=_bearer(issuer, "alice", "researcher"), timeout=30)
    agent = httpx.Client(headers=_bearer(issuer, "agent-uk-tre", "tre-agent", tre="uk-tre"), timeout=40)
    # k0..k5 go to uk-tre, whose agent we play; the submits of the kill window go to sg-tre, so they
    # do not wake the uk-tre long-poll that is open when the gateway dies.
    tres = {f"k{n}": "uk-tre" if n < 6 else "sg-tre" for n in range(30)}

    def submit(http: httpx.Client, key: str) -> str:
        return _submit(http, base, f"job-{key}", key=key, tre=tres[key])

    try:
        gateway.start()

        # Kill 1: the moment the submits have returned.
        ids = {f"k{n}": submit(alice, f"k{n}") for n in range(6)}
        gateway.kill9()
        gateway.start()
        listed = {t["id"]: t for t in _listed(alice, base)}
        assert sorted(listed) == sorted(ids.values())
        assert {_child(t) for t in listed.values()} == {("uk-tre", "received", 0)}

        # Lease every child (attempt 1) and move two of them on.
        leased_at = time.monotonic()
        grants = {g["task_id"]: g for g in _lease(agent, base)}
        assert sorted(grants) == sorted(ids.values())
        assert {g["attempt"] for g in grants.values()} == {1}
        running, staging = grants[ids["k0"]]["child_id"], grants[ids["k1"]]["child_id"]
        for child, seq, stage in [(running, 1, "staging"), (running, 2, "running"), (staging, 1, "staging")]:
            response = _event(agent, base, child, 1, seq, stage)
            assert response.status_code == 200, response.text
            assert response.json() == {"stage": stage, "applied": True}

        # Kill 2: while a long-poll is open and submits with Idempotency-Keys are in flight.
        poll: dict[str, object] = {}

        def long_poll() -> None:
            try:
                poll["answer"] = _lease(agent, base, wait_s=30)
            except httpx.TransportError as exc:
                poll["error"] = exc

        answered: dict[str, str] = {}
        unanswered: list[str] = []
        three_answered = threading.Event()

        def submit_many(first: int) -> None:  # three of these run at once, so submits are in flight
            with httpx.Client(headers=alice.headers, timeout=10) as http:
                for n in range(first, 30, 3):
                    try:
                        answered[f"k{n}"] = submit(http, f"k{n}")
                    except httpx.TransportError:
                        unanswered.append(f"k{n}")
                    if len(answered) >= 3:
                        three_answered.set()

        poller = threading.Thread(target=long_poll, daemon=True)
        submitters = [threading.Thread(target=submit_many, args=(first,), daemon=True) for first in (6, 7, 8)]
        poller.start()
        time.sleep(0.5)  # the poll now waits inside the gateway: nothing is leasable until the TTL
        for thread in submitters:
            thread.start()
        assert three_answered.wait(20)
        gateway.kill9()
        for thread in [poller, *submitters]:
            thread.join(30)
            assert not thread.is_alive()
        assert "error" in poll, f"the long-poll was not open at the kill: {poll}"
        assert unanswered, "every submit was answered before the kill"
        gateway.start()

        # Retrying every submit with its key gives the answered ids back, and there is one task per
        # key in all: nothing lost, nothing made twice.
        retried = {key: submit(alice, key) for key in [*answered, *unanswered]}
        assert {k: retried[k] for k in answered} == answered
        assert {k: submit(alice, k) for k in ids} == ids
        ids.update(retried)
        assert sorted(ids) == sorted(tres)
        listed = {t["id"]: t for t in _listed(alice, base)}
        assert len(listed) == len(ids) == 30
        assert sorted(listed) == sorted(ids.values())
        first = {ids[f"k{n}"] for n in range(6)}
        expected = {
            tid: ("uk-tre", "running", 1)
            if tid == ids["k0"]
            else ("uk-tre", "staging", 1)
            if tid == ids["k1"]
            else ("uk-tre", "leased", 1)
            if tid in first
            else ("sg-tre", "received", 0)
            for tid in ids.values()
        }
        assert {tid: _child(t) for tid, t in listed.items()} == expected

        # A replayed event changes nothing.
        response = _event(agent, base, running, 1, 2, "running")
        assert response.status_code == 200, response.text
        assert response.json() == {"stage": "running", "applied": False}

        # Once the TTL has passed, every uk-tre child is re-offered, at its stage, with attempt 2.
        if time.monotonic() < leased_at + LEASE_TTL_S - 0.5:
            assert _lease(agent, base) == []  # not before
        seen: dict[str, dict] = {}
        deadline = time.monotonic() + 3 * LEASE_TTL_S
        while {g["task_id"] for g in seen.values()} != first:
            assert time.monotonic() < deadline, f"not re-offered after the TTL; seen {sorted(seen)}"
            for grant in _lease(agent, base, wait_s=2):
                assert grant["child_id"] not in seen, f"re-offered twice within one TTL: {grant}"
                seen[grant["child_id"]] = grant
        assert {g["task_id"]: (g["stage"], g["attempt"]) for g in seen.values()} == {
            tid: (stage, 2) for tid, (_, stage, _) in expected.items() if tid in first
        }
        assert {running, staging} <= set(seen)

        # The superseded attempt is refused; the new one is heard.
        for child, seq, stage in [(running, 3, "checking"), (staging, 2, "running")]:
            response = _event(agent, base, child, 1, seq, stage)
            assert response.status_code == 409, response.text
        response = _event(agent, base, running, 2, 1, "checking")
        assert response.json() == {"stage": "checking", "applied": True}

        # Kill 3: right after that event; it stays applied, and the attempt stays 2.
        gateway.kill9()
        gateway.start()
        assert _child(next(t for t in _listed(alice, base) if t["id"] == ids["k0"])) == (
            "uk-tre",
            "checking",
            2,
        )
        response = _event(agent, base, running, 2, 1, "checking")
        assert response.json() == {"stage": "checking", "applied": False}
        assert _event(agent, base, running, 1, 4, "awaiting_review").status_code == 409
        audits = _lease_audits(database_url)
        assert audits == collections.Counter({f"child:{g['child_id']}": 2 for g in seen.values()})
    finally:
        alice.close()
        agent.close()
        gateway.stop()
