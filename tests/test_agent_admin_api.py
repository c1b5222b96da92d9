"""The TRE-admin API served by the agent: only this TRE's admins decide, every decision is audited and
applied, and mistakes are explained."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fivesafes_tes.agent import approvals
from fivesafes_tes.agent.admin_api import create_admin_app
from fivesafes_tes.agent.loop import open_database
from fivesafes_tes.agent.tables import LocalProject
from fivesafes_tes.audit.tables import AuditRecord
from fivesafes_tes.auth import DevIssuer, Person, StaticJwks, TokenValidator
from fivesafes_tes.settings import AgentSettings

FED = "https://federation.example"
ALICE = Person(FED, "alice-sub", "alice")


@pytest.fixture
def admin(tmp_path):
    settings = AgentSettings(tre="uk-tre", data_dir=tmp_path)
    db = open_database(settings)
    with db.write() as session:
        session.add(LocalProject(name="alpha", title="Alpha", members=["alice", "carol"]))
    issuer = DevIssuer(tmp_path / "idp", "https://idp.tre.example/realms/uk")
    validator = TokenValidator(issuer.issuer_url, "fivesafes-tre", StaticJwks(issuer.jwks()), ["RS256"])
    client = TestClient(create_admin_app(db, "uk-tre", validator))

    def token(*roles: str, tre: str | None = "uk-tre", user: str = "dora") -> dict[str, str]:
        return {
            "Authorization": f"Bearer {issuer.issue(user, list(roles), audience='fivesafes-tre', tre=tre)}"
        }

    yield client, db, token
    db.dispose()


def test_a_tre_admin_approves_a_project_and_a_person_and_it_takes_effect(admin):
    client, db, token = admin
    assert (
        client.put(
            "/tre/v1/projects/alpha/decision", json={"decision": "approved"}, headers=token("tre-admin")
        ).status_code
        == 200
    )
    assert (
        client.put(
            "/tre/v1/projects/alpha/members/alice/decision",
            json={"decision": "approved"},
            headers=token("tre-admin"),
        ).status_code
        == 200
    )
    listed = client.get("/tre/v1/projects", headers=token("tre-admin")).json()
    assert [(d["username"], d["decision"], d["decided_by_name"]) for d in listed[0]["decisions"]] == [
        ("", "approved", "dora"),
        ("alice", "approved", "dora"),
    ]
    assert listed[0]["decisions"][0]["decided_by"] == "https://idp.tre.example/realms/uk#dora"
    with db.read() as session:
        assert approvals.clearance(session, "uk-tre", "alpha", ALICE).verdict is approvals.Verdict.APPROVED
        assert (
            approvals.clearance(session, "uk-tre", "alpha", Person(FED, "carol-sub", "carol")).verdict
            is approvals.Verdict.UNDECIDED
        )
        actions = [r.action for r in session.scalars(select(AuditRecord))]
    assert actions == ["tre.decision", "tre.decision"]


def test_only_this_tres_admins_may_decide(admin):
    client, db, token = admin
    body = {"decision": "approved"}
    assert client.put("/tre/v1/projects/alpha/decision", json=body).status_code == 401
    assert (
        client.put(
            "/tre/v1/projects/alpha/decision", json=body, headers={"Authorization": "Bearer junk"}
        ).status_code
        == 401
    )
    assert (
        client.put("/tre/v1/projects/alpha/decision", json=body, headers=token("researcher")).status_code
        == 403
    )
    assert (
        client.put(
            "/tre/v1/projects/alpha/decision", json=body, headers=token("tre-admin", tre="sg-tre")
        ).status_code
        == 403
    )
    assert client.get("/tre/v1/projects", headers=token("output-checker")).status_code == 403
    nameless = client.put("/tre/v1/projects/alpha/decision", json=body, headers=token("tre-admin", tre=None))
    assert nameless.status_code == 403
    assert "names no TRE" in nameless.json()["detail"]
    with db.read() as session:
        assert approvals.clearance(session, "uk-tre", "alpha", ALICE).verdict is approvals.Verdict.UNDECIDED
        failures = [r for r in session.scalars(select(AuditRecord)) if r.action == "auth.failure"]
    assert len(failures) == 2


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/tre/v1/projects/alpha/decision", {"decision": "rejected"}, 400, "reason"),
        ("/tre/v1/projects/nowhere/decision", {"decision": "approved"}, 404, "not assigned"),
        ("/tre/v1/projects/alpha/decision", {"decision": "maybe"}, 400, "decision"),
    ],
)
def test_mistakes_are_explained(admin, path, body, status, words):
    client, _, token = admin
    response = client.put(path, json=body, headers=token("tre-admin"))
    assert response.status_code == status
    assert words in response.json()["detail"]


def test_a_token_naming_no_tre_is_accepted_only_where_the_issuer_serves_this_tre_alone(admin, tmp_path):
    _, db, token = admin
    issuer = DevIssuer(tmp_path / "idp", "https://idp.tre.example/realms/uk")
    validator = TokenValidator(issuer.issuer_url, "fivesafes-tre", StaticJwks(issuer.jwks()), ["RS256"])
    own_issuer = TestClient(create_admin_app(db, "uk-tre", validator, require_tre_claim=False))
    body = {"decision": "approved"}
    assert (
        own_issuer.put("/tre/v1/projects/alpha/decision", json=body, headers=token("tre-admin", tre=None))
    ).status_code == 200
    assert (
        own_issuer.put("/tre/v1/projects/alpha/decision", json=body, headers=token("tre-admin", tre="sg-tre"))
    ).status_code == 403
    listed = own_issuer.get("/tre/v1/projects", headers=token("tre-admin", tre=None)).json()
    assert [(d["username"], d["decision"], d["decided_by_name"]) for d in listed[0]["decisions"]] == [
        ("", "approved", "dora")
    ]


def test_an_approval_by_name_binds_to_the_first_subject_it_lets_run_and_a_rejection_to_anyone(admin):
    client, db, token = admin
    for path in ("/tre/v1/projects/alpha/decision", "/tre/v1/projects/alpha/members/Alice/decision"):
        assert client.put(path, json={"decision": "approved"}, headers=token("tre-admin")).status_code == 200
    impostor = Person(FED, "mallory-sub", "ALICE")
    with db.write() as session:
        assert approvals.clearance(session, "uk-tre", "alpha", ALICE).verdict is approvals.Verdict.APPROVED
        approvals.bind(session, "alpha", ALICE)  # alice's first task runs
    with db.read() as session:
        assert approvals.clearance(session, "uk-tre", "alpha", ALICE).verdict is approvals.Verdict.APPROVED
        assert (
            approvals.clearance(session, "uk-tre", "alpha", impostor).verdict is approvals.Verdict.UNDECIDED
        )
    rejected = client.put(
        "/tre/v1/projects/alpha/members/alice/decision",
        json={"decision": "rejected", "reason": "training expired"},
        headers=token("tre-admin"),
    )
    assert rejected.status_code == 200
    with db.read() as session:
        for person in (ALICE, impostor):
            assert (
                approvals.clearance(session, "uk-tre", "alpha", person).verdict is approvals.Verdict.REJECTED
            )
