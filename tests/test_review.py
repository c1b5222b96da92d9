"""The review policy (RELIABILITY 3): who may approve, how many must, and what each combination of
decisions releases."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from fivesafes_tes.agent import review
from fivesafes_tes.agent.loop import open_database
from fivesafes_tes.agent.tables import HeldFileRecord, LocalChild, ReviewDecision
from fivesafes_tes.audit.tables import AuditRecord
from fivesafes_tes.auth import Person
from fivesafes_tes.egress.airlock import held_key
from fivesafes_tes.egress.held import HeldFile, parse
from fivesafes_tes.settings import AgentSettings

CHILD = "01a20000-0000-7000-8000-000000000001"
IDP = "https://idp.example"
VERDICTS = {"/outputs/table.csv": "pass", "/outputs/plot.png": "review", "step-0.stdout": "fail"}
FILES = {held_key(CHILD, parse(name)): verdict for name, verdict in VERDICTS.items()}


@pytest.fixture
def db(tmp_path):
    database = open_database(AgentSettings(tre="uk-tre", data_dir=tmp_path))
    with database.write() as session:
        session.add(
            LocalChild(
                child_id=CHILD,
                task_id="t",
                attempt=1,
                stage="awaiting_review",
                project="alpha",
                username="alice",
                submitter_issuer=IDP,
                submitter_subject="alice-sub",
                task={},
            )
        )
        for name, verdict in VERDICTS.items():
            file = HeldFile(parse(name), 1, "0" * 64)
            session.add(HeldFileRecord.of(file, CHILD, held_key(CHILD, file.key), verdict, []))
    yield database
    database.dispose()


def decide(db, key, checker, decision, reason="", *, subject=None):
    """`checker` decides; their subject is `subject`, or else their name's (one subject per name)."""
    person = Person(IDP, subject or f"{checker.casefold()}-sub", checker)
    with db.write() as session:
        review.decide(session, CHILD, key, person, decision, reason=reason)


def settle(db, **policy):
    with db.read() as session:
        return review.settle(session, CHILD, review.ReviewPolicy(**policy))


KEYS = list(FILES)


def test_the_submitter_can_never_approve_their_own_outputs(db):
    with pytest.raises(review.ReviewRefused, match="submitted this task"):
        decide(db, KEYS[0], "alice", "approved")
    assert settle(db) is None


@pytest.mark.parametrize("shown", ["Alice", "ALICE", "Dr A. Smith", "carol"])
def test_the_submitters_subject_is_refused_whatever_name_their_token_shows(db, shown):
    with pytest.raises(review.ReviewForbidden, match="submitted this task"):
        decide(db, KEYS[0], shown, "approved", subject="alice-sub")
    assert settle(db) is None


def test_another_subject_showing_the_submitters_name_is_refused_too(db):
    """Where the TRE's issuer is not the federation's, subjects cannot be compared: the name refuses."""
    with pytest.raises(review.ReviewForbidden):
        decide(db, KEYS[0], "Alice", "approved", subject="someone-else")


def test_two_person_review_counts_subjects_not_names(db):
    for key in KEYS:
        decide(db, key, "OC1", "approved", reason="ok", subject="oc1-sub")
        decide(db, key, "oc1", "approved", reason="ok", subject="oc1-sub")  # one person, two spellings
    assert settle(db, required_approvals=2) is None
    for key in KEYS:
        decide(db, key, "oc1", "approved", reason="ok", subject="another-checker")  # two people, one name
    assert settle(db, required_approvals=2).outcome is review.ChildOutcome.RELEASED


def test_every_file_approved_releases_everything(db):
    decide(db, KEYS[0], "carol", "approved")
    decide(db, KEYS[1], "carol", "approved")
    assert settle(db) is None  # one file still open
    decide(db, KEYS[2], "carol", "approved", reason="the flagged number is a run id, not an NHS number")
    settled = settle(db)
    assert settled.outcome is review.ChildOutcome.RELEASED
    assert set(settled.files.values()) == {review.FileOutcome.APPROVED}


def test_some_rejected_is_a_partial_release_and_all_rejected_is_withheld(db):
    decide(db, KEYS[0], "carol", "approved")
    decide(db, KEYS[1], "carol", "rejected", reason="cells under 10 in the legend")
    decide(db, KEYS[2], "carol", "rejected", reason="record-level output")
    settled = settle(db)
    assert settled.outcome is review.ChildOutcome.PARTIALLY_RELEASED
    assert settled.files[KEYS[0]] is review.FileOutcome.APPROVED
    decide(db, KEYS[0], "carol", "rejected", reason="changed my mind: small counts")
    assert settle(db).outcome is review.ChildOutcome.WITHHELD


def test_two_person_review_needs_two_different_checkers(db):
    for key in KEYS:
        decide(db, key, "carol", "approved", reason="ok")
        decide(db, key, "carol", "approved", reason="ok again")  # the same person twice is one approval
    assert settle(db, required_approvals=2) is None
    for key in KEYS:
        decide(db, key, "dave", "approved", reason="ok")
    assert settle(db, required_approvals=2).outcome is review.ChildOutcome.RELEASED


def test_one_rejection_withholds_a_file_whatever_the_approvals(db):
    for key in KEYS:
        decide(db, key, "carol", "approved", reason="ok")
        decide(db, key, "dave", "approved", reason="ok")
    decide(db, KEYS[1], "erin", "rejected", reason="identifiable")
    assert settle(db, required_approvals=2).files[KEYS[1]] is review.FileOutcome.REJECTED


@pytest.mark.parametrize(
    ("key", "decision", "reason", "words"),
    [
        (KEYS[0], "rejected", "", "say why"),
        (KEYS[2], "approved", "", "failed an automated check"),
        (KEYS[0], "maybe", "", "'approved' or 'rejected'"),
    ],
)
def test_decisions_without_what_the_researcher_needs_are_refused(db, key, decision, reason, words):
    with pytest.raises(review.ReviewRefused, match=words):
        decide(db, key, "carol", decision, reason)


def test_auto_release_only_when_every_rule_passed(db):
    assert settle(db, auto_release=True) is None  # plot.png needs review, stdout failed
    with db.write() as session:
        for record in session.scalars(select(HeldFileRecord)):
            record.verdict = "pass"
    assert settle(db, auto_release=True).outcome is review.ChildOutcome.RELEASED
    assert settle(db, auto_release=False) is None


def test_no_decision_once_the_child_has_moved_on_and_each_decision_is_audited(db):
    decide(db, KEYS[0], "carol", "approved")
    with db.write() as session:
        session.get(LocalChild, CHILD).stage = "released"
    with pytest.raises(review.ReviewRefused, match="not awaiting review"):
        decide(db, KEYS[1], "carol", "approved")
    with db.read() as session:
        assert (
            session.scalar(
                select(func.count()).select_from(AuditRecord).where(AuditRecord.action == "review.decision")
            )
            == 1
        )


# --- the review API served inside the TRE ----------------------------------------------------------


@pytest.fixture
def api(db, tmp_path):
    from fastapi.testclient import TestClient

    from fivesafes_tes.agent.admin_api import create_admin_app
    from fivesafes_tes.auth import DevIssuer, StaticJwks, TokenValidator

    issuer = DevIssuer(tmp_path / "idp", "https://idp.tre.example")
    validator = TokenValidator(issuer.issuer_url, "fivesafes-tre", StaticJwks(issuer.jwks()), ["RS256"])
    client = TestClient(create_admin_app(db, "uk-tre", validator))

    def as_(user: str, *roles: str, tre: str | None = "uk-tre") -> dict[str, str]:
        return {
            "Authorization": f"Bearer {issuer.issue(user, list(roles), audience='fivesafes-tre', tre=tre)}"
        }

    return client, as_


def test_only_output_checkers_of_this_tre_use_the_review_api(api):
    client, as_ = api
    body = {"name": "/outputs/table.csv", "decision": "approved"}
    url = f"/review/v1/children/{CHILD}/decisions"
    assert client.post(url, json=body).status_code == 401
    for headers in (
        as_("agent-uk", "tre-agent"),
        as_("dora", "tre-admin"),
        as_("carol", "researcher"),
        as_("carol", "output-checker", tre="sg-tre"),
        as_("carol", "output-checker", tre=None),  # where TREs share an issuer: a checker of which TRE?
    ):
        assert client.post(url, json=body, headers=headers).status_code == 403
        assert client.get("/review/v1/children", headers=headers).status_code == 403
    assert (
        client.post(url, json=body, headers=as_("alice", "output-checker")).status_code == 403
    )  # the submitter
    ok = client.post(url, json=body, headers=as_("carol", "output-checker"))
    assert ok.status_code == 200
    assert ok.json()["checker"] == "carol"
    pending = client.get("/review/v1/children", headers=as_("carol", "output-checker")).json()
    shown = {f["name"]: f for f in pending[0]["files"]}
    assert shown["/outputs/table.csv"]["decisions"] == [["carol", "approved", ""]]
    missing = client.post(
        url, json={"name": "nope.csv", "decision": "approved"}, headers=as_("carol", "output-checker")
    )
    assert missing.status_code == 404


def test_a_file_whose_checks_could_not_run_can_be_rejected_but_never_approved(db):
    with db.write() as session:
        record = session.get(HeldFileRecord, (CHILD, KEYS[0]))
        record.verdict = "fail"
        record.results = [
            {
                "rule": "small_cell",
                "version": "1",
                "verdict": "fail",
                "error": "timed out after 60 s",
                "findings": [],
            }
        ]
    with pytest.raises(review.ReviewRefused, match="could not run"):
        decide(db, KEYS[0], "carol", "approved", reason="looks fine to me")
    decide(db, KEYS[0], "carol", "rejected", reason="checks could not run")


def test_the_checker_sees_the_run_and_the_whole_record_and_only_the_released_part_leaves(api, db):
    client, as_ = api
    carol = as_("carol", "output-checker")
    steps = [{"exit_code": 112, "start_time": "2026-01-01T00:00:00Z", "end_time": "2026-01-01T00:00:07Z"}]
    with db.write() as session:
        session.get(LocalChild, CHILD).result = {
            "outcome": {"outcome": "failed", "message": "", "steps": steps}
        }
        session.get(HeldFileRecord, (CHILD, KEYS[1])).results = [
            {
                "rule": "record_level",
                "version": "2",
                "verdict": "review",
                "findings": [{"verdict": "review", "message": "a row quotes person 10000001"}],
            }
        ]
    shown = client.get(f"/review/v1/children/{CHILD}", headers=carol).json()
    assert shown["outcome"] == "failed"
    assert shown["steps"] == steps
    assert (
        client.get(f"/review/v1/children/{CHILD}/disclosure", headers=carol).status_code == 404
    )  # not settled

    decide(db, KEYS[0], "carol", "approved")
    decide(db, KEYS[1], "carol", "rejected", reason="small cells")
    decide(db, KEYS[2], "carol", "rejected", reason="record-level output")
    decide(db, KEYS[2], "dave", "rejected", reason="small cells")
    policy = review.ReviewPolicy()
    with db.write() as session:
        child = session.get(LocalChild, CHILD)
        record = review.disclosure_record(
            session, child, "uk-tre", review.settle(session, CHILD, policy), policy
        )
        child.result = {**child.result, "disclosure": record}
    exported = review.exported(record)
    assert [f["name"] for f in exported["files"]] == ["/outputs/table.csv"]
    assert exported["withheld_reasons"] == ["record-level output", "small cells"]  # distinct, sorted
    text = str(exported)
    assert "plot.png" not in text
    assert "step-0.stdout" not in text
    assert "10000001" not in text

    kept = client.get(f"/review/v1/children/{CHILD}/disclosure", headers=carol)
    assert kept.status_code == 200
    assert kept.json() == record
    assert "a row quotes person 10000001" in str(kept.json())
    assert (
        client.get(f"/review/v1/children/{CHILD}/disclosure", headers=as_("alice", "researcher")).status_code
        == 403
    )


def test_no_decision_changes_once_the_release_has_begun(db):
    """The gateway keeps the approvals it was first sent: a restarted release must send the same."""
    decide(db, KEYS[0], "carol", "approved")
    with db.write() as session:
        session.get(LocalChild, CHILD).result = {review.RELEASING: True}
    with pytest.raises(review.ReviewRefused, match="has begun: its decisions are final"):
        decide(db, KEYS[0], "carol", "rejected", reason="changed my mind")
    with db.read() as session:
        assert session.get(ReviewDecision, (CHILD, KEYS[0], IDP, "carol-sub")).decision == "approved"
