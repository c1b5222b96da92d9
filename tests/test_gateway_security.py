"""RELIABILITY 6 (concurrent idempotency), 26 (one audit record per security event), and the operational
routes. The 401/403 matrix over every route (RELIABILITY 1) is tests/test_route_auth.py."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import pytest
from sqlalchemy import func, select

from fivesafes_tes import devstack
from fivesafes_tes.audit.tables import AuditRecord
from fivesafes_tes.auth import DevIssuer

TES = "/ga4gh/tes/v1"
ADMIN = "/admin/v1"
SOME_ID = "01a00000-0000-7000-8000-000000000000"
TASK = {"executors": [{"image": "alpine", "command": ["true"]}]}


def test_basic_auth_scheme_is_refused(gateway):
    response = gateway.client.get(f"{TES}/tasks", headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"})
    assert response.status_code == 401


def _audit(gateway) -> list[AuditRecord]:
    with gateway.db.read() as session:
        return list(session.scalars(select(AuditRecord).order_by(AuditRecord.seq)))


def test_each_security_event_writes_exactly_one_audit_record(gateway):
    setup = len(_audit(gateway))  # the federation the fixture created, each change audited once
    assert setup == 2 + 2 + 2 + 3  # TREs, projects, project TRE sets, memberships
    task_id = gateway.client.post(f"{TES}/tasks", json=TASK, headers=gateway.headers()).json()["id"]
    gateway.client.get(f"{TES}/tasks/{task_id}", headers=gateway.headers())  # a read is not an event
    gateway.client.post(f"{TES}/tasks/{task_id}:cancel", headers=gateway.headers())
    gateway.client.post(f"{TES}/tasks/{task_id}:cancel", headers=gateway.headers())  # no-op: no event
    gateway.client.get(f"{TES}/tasks", headers={"Authorization": "Bearer junk"})
    records = _audit(gateway)[setup:]
    assert [(r.action, r.object, r.outcome) for r in records] == [
        ("task.create", f"task:{task_id}", "ok"),
        ("task.cancel", f"task:{task_id}", "ok"),
        ("auth.failure", f"route:GET {TES}/tasks", "denied"),
    ]
    assert records[0].actor == "alice"
    assert records[2].actor == "anonymous"
    assert all(r.at is not None for r in records)
    assert "junk" not in json.dumps([r.detail for r in records])  # the token itself is never recorded


def test_metrics_need_a_token_or_the_static_metrics_token(database_url, tmp_path):
    from tests.conftest import Gateway

    gw = Gateway(database_url, tmp_path / "d", metrics_token="scrape-secret-123")
    try:
        assert gw.client.get("/metrics").status_code == 401
        assert gw.client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        scraped = gw.client.get("/metrics", headers={"Authorization": "Bearer scrape-secret-123"})
        assert scraped.status_code == 200
        assert "fivesafes_http_requests_total" in scraped.text
        gw.client.post(f"{TES}/tasks", json=TASK, headers=gw.headers())
        after = gw.client.get("/metrics", headers=gw.headers()).text
        assert "fivesafes_tasks_created_total 1.0" in after
        assert 'route="/tasks"' in after  # the template, never a raw path with an id
    finally:
        gw.close()


def test_database_outage_is_503_with_retry_after(tmp_path):
    from tests.conftest import Gateway

    gw = Gateway("postgresql+psycopg://nobody:nothing@127.0.0.1:1/none", tmp_path / "d", seed=False)
    try:
        response = gw.client.post(f"{TES}/tasks", json=TASK, headers=gw.headers())
        assert response.status_code == 503
        assert response.headers["retry-after"]
        ready = gw.client.get("/readyz")
        assert ready.status_code == 503
        assert gw.client.get("/healthz").status_code == 200
    finally:
        gw.close()


def test_twenty_concurrent_copies_with_one_idempotency_key_make_one_task(database_url, tmp_path):
    with devstack.start(tmp_path / "live", database_url=database_url) as stack:
        headers = {"Authorization": f"Bearer {stack.token('alice')}", "Idempotency-Key": "same-key"}

        def submit(_: int) -> httpx.Response:
            return httpx.post(f"{stack.url}{TES}/tasks", json=TASK, headers=headers, timeout=30)

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(submit, range(20)))
        assert [r.status_code for r in responses] == [200] * 20
        assert len({r.json()["id"] for r in responses}) == 1
        listed = httpx.get(f"{stack.url}{TES}/tasks", headers=headers, timeout=30).json()["tasks"]
        assert len(listed) == 1
        with stack_db(stack) as session:
            creates = session.scalar(
                select(func.count()).select_from(AuditRecord).where(AuditRecord.action == "task.create")
            )
        assert creates == 1


def stack_db(stack):
    from fivesafes_tes.db import Database

    return Database(stack.settings.effective_database_url).read()


def test_identity_provider_outage_is_503_not_401(database_url, tmp_path, monkeypatch):
    """With a real OIDC configuration whose JWKS cannot be fetched, callers are told to retry."""
    from fastapi.testclient import TestClient

    from fivesafes_tes.db import Database
    from fivesafes_tes.gateway.app import create_app
    from fivesafes_tes.settings import GatewaySettings

    issuer = DevIssuer(tmp_path / "idp", "http://127.0.0.1:1/realms/x")
    settings = GatewaySettings(
        data_dir=tmp_path / "d",
        database_url=database_url,
        oidc_issuer=issuer.issuer_url,
        oidc_jwks_url="http://127.0.0.1:1/jwks.json",
    )
    db = Database(database_url)
    client = TestClient(create_app(settings, db=db))
    token = issuer.issue("alice", ["researcher"], audience=settings.oidc_audience)
    response = client.get(f"{TES}/tasks", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 503
    assert response.headers["retry-after"]
    db.dispose()


# --- RELIABILITY 34: people are their issuer and subject, never their username -------------------


def _as(gateway, username: str, subject: str, *roles: str) -> dict[str, str]:
    token = gateway.token(username, *roles, extra={"sub": subject})
    return {"Authorization": f"Bearer {token}"}


def test_another_subject_with_alices_username_gets_nothing_of_hers(gateway):
    from fivesafes_tes.submission.tables import Child, ReleasedFile

    alice = _as(gateway, "alice", "alice-sub")
    created = gateway.client.post(f"{TES}/tasks", json=TASK, headers=alice)
    assert created.status_code == 200, created.text
    task_id = created.json()["id"]
    with gateway.db.write() as session:
        child = session.scalars(select(Child).where(Child.task_id == task_id)).first()
        child.stage = "released"
        session.add(
            ReleasedFile(
                task_id=task_id,
                child_id=child.id,
                name="/out.csv",
                kind="output",
                size=1,
                sha256="0" * 64,
                key="k",
            )
        )
    with gateway.db.read() as session:
        file_id = session.scalar(select(ReleasedFile.id))

    impostor = _as(gateway, "alice", "mallory-sub")  # an IdP that lets users pick preferred_username
    assert gateway.client.get(f"{TES}/tasks", headers=impostor).json().get("tasks", []) == []
    for view in ("MINIMAL", "FULL"):
        assert gateway.client.get(f"{TES}/tasks/{task_id}?view={view}", headers=impostor).status_code == 404
    assert gateway.client.get(f"/api/v1/tasks/{task_id}/results", headers=impostor).status_code == 404
    assert gateway.client.get(f"/api/v1/results/{file_id}", headers=impostor).status_code == 404
    assert gateway.client.post(f"{TES}/tasks/{task_id}:cancel", headers=impostor).status_code == 404
    refused = gateway.client.post(f"{TES}/tasks", json=TASK, headers=impostor)
    assert refused.status_code == 400
    assert "none" in refused.json()["detail"]
    with gateway.db.read() as session:
        conflicts = list(
            session.scalars(select(AuditRecord).where(AuditRecord.action == "auth.name_conflict"))
        )
    assert [(c.object, c.detail["subject"]) for c in conflicts] == [("user:alice", "mallory-sub")]

    # alice herself, whatever name her token shows today, still has everything
    renamed = _as(gateway, "Alice Smith", "alice-sub")
    assert [t["id"] for t in gateway.client.get(f"{TES}/tasks", headers=renamed).json()["tasks"]] == [task_id]
    assert gateway.client.post(f"{TES}/tasks/{task_id}:cancel", headers=renamed).status_code == 200


def test_members_are_added_by_casefolded_name_and_bound_to_who_first_uses_it(gateway):
    admin = gateway.headers("fed", "federation-admin")
    added = gateway.client.post(f"{ADMIN}/projects/alpha/members", json={"username": "Dave"}, headers=admin)
    assert added.status_code == 200
    assert "dave" in added.json()["members"]
    dave = _as(gateway, "dave", "dave-sub")
    assert gateway.client.post(f"{TES}/tasks", json=TASK, headers=dave).status_code == 200
    # The name is dave-sub's now: a second subject calling itself DAVE is no member.
    assert (
        gateway.client.post(f"{TES}/tasks", json=TASK, headers=_as(gateway, "DAVE", "other-sub")).status_code
        == 400
    )

    # Someone who signed in before being added is bound at once: no wait for their next login.
    erin = _as(gateway, "erin", "erin-sub")
    assert gateway.client.get(f"{TES}/tasks", headers=erin).status_code == 200
    gateway.client.post(f"{ADMIN}/projects/alpha/members", json={"username": "ERIN"}, headers=admin)
    assert gateway.client.post(f"{TES}/tasks", json=TASK, headers=erin).status_code == 200
    removed = gateway.client.delete(f"{ADMIN}/projects/alpha/members/Erin", headers=admin)
    assert removed.status_code == 200
    assert "erin" not in removed.json()["members"]


# --- NUL characters: refused with a 400 that says so, on SQLite and PostgreSQL ------------------


def _with(**extra) -> dict:
    return {**TASK, **extra}


NUL_TASKS = [
    ("name", _with(name="a\x00b")),
    ("description", _with(description="\x00")),
    ("tags", _with(tags={"k\x00": "v"})),
    ("tags", _with(tags={"study": "v\x00"})),
    ("inputs.0.path", _with(inputs=[{"path": "/in/a\x00", "content": "x"}])),
    ("inputs.0.content", _with(inputs=[{"path": "/in/a", "content": "x\x00"}])),
    ("outputs.0.url", _with(outputs=[{"path": "/out/a", "url": "s3://r/\x00"}])),
    ("executors.0.command", {"executors": [{"image": "alpine", "command": ["echo", "\x00"]}]}),
    ("executors.0.env", {"executors": [{"image": "alpine", "command": ["true"], "env": {"A": "\x00"}}]}),
    ("volumes", _with(volumes=["/vol/\x00"])),
]


@pytest.mark.parametrize(("field", "task"), NUL_TASKS)
def test_a_nul_character_anywhere_in_a_task_is_400_saying_so(gateway, field, task):
    response = gateway.client.post(f"{TES}/tasks", json=task, headers=gateway.headers())
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith(f"{field}: a NUL character (\\u0000)")
    assert not [r for r in _audit(gateway) if r.action == "task.create"]


def test_a_refusal_quotes_what_was_sent_without_its_control_characters(gateway):
    # A tag whose value is not a string is refused naming the tag: its key comes back escaped.
    task = _with(tags={"a\x00b\x1b[31m": 5})
    response = gateway.client.post(f"{TES}/tasks", json=task, headers=gateway.headers())
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "tags.a\\u0000b\\u001b[31m: " in detail
    assert all(c.isprintable() for c in detail)


def test_a_nul_character_in_a_url_is_400_on_every_route(gateway):
    task_id = gateway.client.post(f"{TES}/tasks", json=TASK, headers=gateway.headers()).json()["id"]
    admin = gateway.headers("root", "federation-admin")
    for method, url, params, headers in [
        ("GET", f"{TES}/tasks", {"name_prefix": "a\x00"}, gateway.headers()),
        ("GET", f"{TES}/tasks", {"tag_key": "k\x00"}, gateway.headers()),
        ("GET", f"{TES}/tasks", {"tag_key": "k", "tag_value": "\x00"}, gateway.headers()),
        ("GET", f"{TES}/tasks/{task_id}%00", {}, gateway.headers()),
        ("POST", f"{TES}/tasks/{task_id}%00:cancel", {}, gateway.headers()),
        ("GET", f"/api/v1/tasks/{task_id}%00/results", {}, gateway.headers()),
        ("PATCH", "/admin/v1/projects/alpha%00", {}, admin),
        ("DELETE", "/admin/v1/projects/alpha/members/bob%00", {}, admin),
    ]:
        response = gateway.client.request(method, url, params=params, headers=headers)
        assert response.status_code == 400, (url, params, response.text)
        assert "NUL character" in response.json()["detail"]
    tasks = gateway.client.get(f"{TES}/tasks", headers=gateway.headers()).json()["tasks"]
    assert [t["id"] for t in tasks] == [task_id]  # and nothing was canceled


def test_a_nul_character_in_an_admin_body_is_400_saying_so(gateway):
    admin = gateway.headers("root", "federation-admin")
    response = gateway.client.post(
        "/admin/v1/projects", json={"name": "new\x00", "title": "t"}, headers=admin
    )
    assert response.status_code == 400
    assert response.json()["detail"].startswith("name: a NUL character")
    assert (
        gateway.client.patch("/admin/v1/projects/alpha", json={"title": "\x00"}, headers=admin).status_code
        == 400
    )


# --- a body over the limit is 413, whether its length is declared or it arrives chunked ---------


def test_a_body_over_the_limit_is_413_declared_or_chunked(database_url, tmp_path):
    from tests.conftest import Gateway

    gw = Gateway(database_url, tmp_path / "data", max_body_bytes=64 * 1024)
    try:
        task = _with(inputs=[{"path": "/in/big", "content": "a" * (64 * 1024)}])
        body = json.dumps(task).encode()

        def chunked():  # no Content-Length: Transfer-Encoding: chunked
            for start in range(0, len(body), 8192):
                yield body[start : start + 8192]

        headers = {**gw.headers(), "Content-Type": "application/json"}
        for content in (body, chunked()):
            response = gw.client.post(f"{TES}/tasks", content=content, headers=headers)
            assert response.status_code == 413, response.text
            assert response.json() == {
                "detail": "request body over this server's 65536-byte limit; send a smaller one "
                "(a large task input belongs in the project's input store, named by its url)"
            }
        small = json.dumps(TASK).encode()
        assert gw.client.post(f"{TES}/tasks", content=iter([small]), headers=headers).status_code == 200
        with gw.db.read() as session:
            assert [r.action for r in session.scalars(select(AuditRecord))].count("task.create") == 1
    finally:
        gw.close()


# --- refused attempts on other people's objects: 404 as for unknown ids, and audited ------------


def test_each_refused_attempt_on_someone_elses_task_or_file_is_404_and_audited_once(gateway):
    from fivesafes_tes.submission.tables import Child, ReleasedFile

    task_id = gateway.client.post(f"{TES}/tasks", json=TASK, headers=gateway.headers("alice")).json()["id"]
    with gateway.db.write() as session:
        child = session.scalars(select(Child).where(Child.task_id == task_id)).first()
        child.stage = "released"
        released = ReleasedFile(
            task_id=task_id,
            child_id=child.id,
            name="/out/t.csv",
            kind="output",
            size=1,
            sha256="0" * 64,
            key="k",
        )
        session.add(released)
        session.flush()
        file_id = released.id
    attempts = [
        ("GET", f"{TES}/tasks/{{}}", f"task:{task_id}"),
        ("GET", f"{TES}/tasks/{{}}?view=FULL", f"task:{task_id}"),
        ("POST", f"{TES}/tasks/{{}}:cancel", f"task:{task_id}"),
        ("GET", "/api/v1/tasks/{}/results", f"task:{task_id}"),
    ]
    setup = len(_audit(gateway))
    bob = gateway.headers("bob")
    for method, template, _ in attempts:
        foreign = gateway.client.request(method, template.format(task_id), headers=bob)
        unknown = gateway.client.request(method, template.format(SOME_ID), headers=bob)
        assert foreign.status_code == unknown.status_code == 404
        assert foreign.json()["detail"].replace(task_id, SOME_ID) == unknown.json()["detail"]
    foreign = gateway.client.get(f"/api/v1/results/{file_id}", headers=bob)
    unknown = gateway.client.get(f"/api/v1/results/{file_id + 1000}", headers=bob)
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json()["detail"].replace(str(file_id), "N") == unknown.json()["detail"].replace(
        str(file_id + 1000), "N"
    )

    records = _audit(gateway)[setup:]
    expected = []
    for _, _, obj in attempts:
        expected += [("bob", "access.denied", obj, "denied", {"exists": True})]
        expected += [("bob", "access.denied", f"task:{SOME_ID}", "denied", {"exists": False})]
    expected += [("bob", "access.denied", f"released:{file_id}", "denied", {"exists": True})]
    expected += [("bob", "access.denied", f"released:{file_id + 1000}", "denied", {"exists": False})]
    assert [(r.actor, r.action, r.object, r.outcome, r.detail) for r in records] == expected
    # The owner is not refused, and the task was not canceled by bob's attempt.
    mine = gateway.client.get(f"{TES}/tasks/{task_id}", headers=gateway.headers("alice"))
    assert mine.status_code == 200
    assert mine.json()["state"] != "CANCELED"
    assert len(_audit(gateway)) == setup + len(expected)
