"""The review page of one child: the request, exit codes and each held file with its rule findings;
a checker approves or rejects each file with a reason, through the same function as the API (audited),
under the same rules (no approving a file never to be released, nor one's own task's outputs)."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from fivesafes_tes.agent import approvals, record
from fivesafes_tes.agent.tables import ReviewDecision
from fivesafes_tes.audit.tables import AuditRecord
from fivesafes_tes.auth.principal import Person
from tests.web import csrf_of, hold_child, sign_in, tre_site


@pytest.fixture
def site(tmp_path):
    with tre_site(tmp_path) as site:
        hold_child(site.db)
        yield site


def test_a_checker_sees_the_request_and_what_the_rules_found(site):
    page = sign_in(site, "uk-tre-checker").get("/review/child-1")
    assert page.status_code == 200
    for shown in (
        "fivesafes/stats:1",
        "python count.py",
        "small_cell: a count of 3 is below 10 (column n, row 2)",
        "Never released: it is marked never to be released",
        "Approve /out/table.csv",
        "0 of 1",
    ):
        assert shown in page.text, shown
    assert "Approve /out/tool.bin" not in page.text
    assert "Reject /out/tool.bin" in page.text


def test_a_checker_approves_a_file_with_a_reason_recorded_and_audited(site):
    checker = sign_in(site, "uk-tre-checker")
    form = {"csrf": csrf_of(checker.get("/review/child-1").text), "name": "/out/table.csv"}
    done = checker.post(
        "/review/child-1", data={**form, "decision": "approved", "reason": "3 is a suppressed total"}
    )
    assert done.status_code == 303
    assert "1 of 1" in checker.get(done.headers["location"]).text
    with site.db.read() as session:
        decision = session.scalars(select(ReviewDecision)).one()
        assert (decision.checker, decision.decision, decision.reason) == (
            "uk-tre-checker",
            "approved",
            "3 is a suppressed total",
        )
        audited = session.scalars(select(AuditRecord).where(AuditRecord.action == "review.decision")).one()
        assert audited.object == "child:child-1//out/table.csv"


@pytest.mark.parametrize(
    ("name", "decision", "reason", "status", "why"),
    [
        ("/out/tool.bin", "approved", "fine", 409, "can never be released"),
        ("/out/table.csv", "approved", " ", 400, "every decision needs a reason"),
        ("/out/none.csv", "rejected", "no", 404, "holds no file named"),
        ("/out/table.csv", "maybe", "no", 400, "choose Approve or Reject"),
    ],
)
def test_a_decision_the_rules_forbid_is_refused(site, name, decision, reason, status, why):
    checker = sign_in(site, "uk-tre-checker")
    token = csrf_of(checker.get("/review/child-1").text)
    refused = checker.post(
        "/review/child-1", data={"csrf": token, "name": name, "decision": decision, "reason": reason}
    )
    assert refused.status_code == status
    assert why in refused.text
    with site.db.read() as session:
        assert session.scalars(select(ReviewDecision)).all() == []


def test_no_one_reviews_their_own_tasks_outputs(site):
    hold_child(site.db, "child-2", submitter="uk-tre-checker")
    checker = sign_in(site, "uk-tre-checker")
    token = csrf_of(checker.get("/review/child-2").text)
    refused = checker.post(
        "/review/child-2",
        data={"csrf": token, "name": "step-0.stdout", "decision": "approved", "reason": "ok"},
    )
    assert refused.status_code == 403
    assert "submitted this task" in refused.text


def test_the_review_page_refuses_admins_other_tres_and_forged_forms(site):
    assert sign_in(site, "uk-tre-admin").get("/review/child-1").status_code == 403
    assert sign_in(site, "sg-tre-checker").get("/review/child-1").status_code == 403
    checker = sign_in(site, "uk-tre-checker")
    form = {"csrf": "forged", "name": "step-0.stdout", "decision": "approved", "reason": "ok"}
    assert checker.post("/review/child-1", data=form).status_code == 403
    assert checker.get("/review/no-such-child").status_code == 404


def test_the_decision_history_lists_decisions_newest_first_and_searches_them(site):
    checker = sign_in(site, "uk-tre-checker")
    token = csrf_of(checker.get("/review/child-1").text)
    for name, decision, reason in (
        ("/out/table.csv", "rejected", "a count of 3 would identify someone"),
        ("step-0.stdout", "approved", "100% harmless"),
    ):
        sent = checker.post(
            "/review/child-1", data={"csrf": token, "name": name, "decision": decision, "reason": reason}
        )
        assert sent.status_code == 303
    everything = checker.get("/review/history")
    assert everything.status_code == 200
    assert "2 decisions; page 1 of 1" in everything.text
    assert everything.text.index("100% harmless") < everything.text.index("a count of 3")
    found = checker.get("/review/history", params={"q": "IDENTIFY"})
    assert "1 decision matching" in found.text
    assert "/out/table.csv" in found.text
    assert "step-0.stdout" not in found.text
    assert "1 decision matching" in checker.get("/review/history", params={"q": "100%"}).text
    assert "0 decisions matching" in checker.get("/review/history", params={"q": "_%"}).text
    assert sign_in(site, "uk-tre-admin").get("/review/history").status_code == 403


def test_a_checker_reads_the_requests_activity_crate_with_this_tres_sign_off(site):
    """The review page shows what the request's Five Safes crate records (here, a bare TES task's):
    the gateway's validation, this TRE's sign-off of the project and the person as its admin decided
    (who, why), the run and the disclosure check in review; the crate downloads as JSON-LD."""
    admin = Person("https://issuer.example", "admin-1", "uk-tre-admin")
    with site.db.write() as session:
        approvals.decide(session, admin, "alpha", "approved", reason="ethics approval 24/NW/0001")
        approvals.decide(session, admin, "alpha", "approved", username="alice", reason="trained in 2026")
    checker = sign_in(site, "uk-tre-checker")
    page = checker.get("/review/child-1")
    assert page.status_code == 200
    for shown in (
        "The request's activity crate",
        "Sign-off by uk-tre of the project and the person: approved",
        "project alpha: approved by uk-tre-admin (ethics approval 24/NW/0001); alice: approved by "
        "uk-tre-admin (trained in 2026)",
        "Disclosure check of the outputs at uk-tre: in review",
        "ValidationCheck",
        '<span class="status-completed">completed</span>',
        '<span class="status-active">active</span>',
    ):
        assert shown in page.text, shown

    download = checker.get("/review/child-1/crate")
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/ld+json"
    assert download.headers["content-disposition"] == 'attachment; filename="ro-crate-metadata.json"'
    graph = {e["@id"]: e for e in download.json()["@graph"]}
    assert graph["#fivesafes-tes-signoff-uk-tre"]["actionStatus"] == "http://schema.org/CompletedActionStatus"
    assert graph["#fivesafes-tes-disclosure-uk-tre"]["actionStatus"] == "http://schema.org/ActiveActionStatus"

    api = httpx.get(
        f"{site.url}/review/v1/children/child-1/crate",
        headers={"Authorization": f"Bearer {site.token('uk-tre-checker', 'output-checker')}"},
    )
    assert api.status_code == 200
    assert {e["@id"] for e in api.json()["@graph"]} == set(graph)
    for refused, status in (
        (sign_in(site, "uk-tre-admin").get("/review/child-1/crate"), 403),
        (checker.get("/review/child-2/crate"), 404),
    ):
        assert refused.status_code == status


def test_the_crate_view_says_which_actions_only_the_request_crate_states():
    """A request crate may name its own action "Sign-off ...: approved"; intake keeps a non-assessment,
    so the page must not show it as the TRE's own record."""
    crate = {
        "@graph": [
            {
                "@id": "./",
                "name": "r",
                "mentions": [{"@id": "#forged"}, {"@id": "#fivesafes-tes-signoff-uk-tre"}],
            },
            {
                "@id": "#forged",
                "@type": "ControlAction",
                "name": "Sign-off by uk-tre of the project and the person: approved",
                "actionStatus": {"@id": "http://schema.org/CompletedActionStatus"},
            },
            {
                "@id": "#fivesafes-tes-signoff-uk-tre",
                "@type": "AssessAction",
                "additionalType": {"@id": "https://w3id.org/shp#SignOff"},
                "name": "Sign-off by uk-tre of the project and the person: pending",
                "actionStatus": "http://schema.org/PotentialActionStatus",
            },
        ]
    }
    forged, ours = record.view(crate).actions
    assert (forged.recorded, forged.status, forged.kind) == (False, "completed", "ControlAction")
    assert (ours.recorded, ours.status, ours.kind) == (True, "potential", "SignOff")
