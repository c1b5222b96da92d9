"""RELIABILITY 32: never release is absolute. A file marked never to be released (a `DONT_RELEASE`
name, an ACRO output marked so, a failure of a rule the TRE configured `never_release`) or whose
checks could not run is approved by no one: not one checker with a reason, not two, not auto-release,
not through the review API or the CLI; the child ends without it and the gateway never gets it."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from fivesafes_tes import devstack
from fivesafes_tes.agent import checks as agent_checks
from fivesafes_tes.agent import review
from fivesafes_tes.agent.loop import open_database
from fivesafes_tes.agent.tables import HeldFileRecord, LocalChild, ReviewDecision
from fivesafes_tes.auth import Person
from fivesafes_tes.devimages import BUSYBOX_IMAGE
from fivesafes_tes.egress import checks
from fivesafes_tes.egress.checks import ChecksConfig, HeldFile, run_checks
from fivesafes_tes.egress.held import OutputKey
from fivesafes_tes.egress.store import ObjectStore
from fivesafes_tes.settings import AgentSettings
from fivesafes_tes.submission.tables import ReleasedFile
from tests import images
from tests.conftest import TRE_IDP as IDP
from tests.conftest import served_tre_api

TES = "/ga4gh/tes/v1"
CHILD = "01a20000-0000-7000-8000-0000000000aa"
COUNTS = "region,n_patients\nnorth,120\nsouth,45\n"
ACRO_RESULTS = {
    "version": "0.4.5",
    "results": {
        "output_0": {
            "status": "pass",
            "type": "table",
            "summary": "pass",
            "files": [{"name": "table.csv"}],
            "comments": ["dont release", "for my own checking"],
        }
    },
}
FILES = {
    "/outputs/fine.csv": COUNTS,
    "/outputs/extract-DONT_RELEASE.csv": COUNTS,
    "/outputs/acro/results.json": json.dumps(ACRO_RESULTS),
    "/outputs/acro/table.csv": COUNTS,
    "/outputs/crash.csv": COUNTS,
    "/outputs/small.csv": "region,n_patients\nnorth,3\nsouth,120\n",
}
# Each file no one may approve, and words of the reason the checker is given.
NEVER = {
    "/outputs/extract-DONT_RELEASE.csv": "is named 'DONT_RELEASE'",
    "/outputs/acro/table.csv": "marked 'DONT_RELEASE' by ACRO",
    "/outputs/crash.csv": "fake_raise_on could not run",
    "/outputs/small.csv": "marked never to be released (small_cell:",
}
CHECKS = {
    "enabled": ["file_type", "acro", "small_cell", "fake_raise_on"],
    "small_cell": {"never_release": True},
    "fake_raise_on": {"on": "crash"},
}


@pytest.fixture(autouse=True)
def crashing_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(checks.RULES, "fake_raise_on", "tests.fake_check_rules:RaiseOn")


def _held_files(root: Path) -> list[HeldFile]:
    files = []
    for name, text in FILES.items():
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        digest = hashlib.sha256(text.encode()).hexdigest()
        files.append(HeldFile(OutputKey(name), len(text), digest, path))
    return files


@pytest.fixture
def db(tmp_path):
    """A child awaiting review whose files were judged by the real runner under CHECKS."""
    reports = run_checks(_held_files(tmp_path / "held"), ChecksConfig.model_validate(CHECKS), "alpha")
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
                task={},
            )
        )
        for report in reports:
            session.add(
                HeldFileRecord(
                    child_id=CHILD,
                    key=f"held/{CHILD}/outputs{report.file.name}",
                    name=report.file.name,
                    kind="output",
                    size=report.file.size,
                    sha256=report.file.sha256,
                    verdict=report.verdict.value,
                    results=[agent_checks._as_data(r) for r in report.results],
                )
            )
    yield database
    database.dispose()


def _decide(db, name: str, checker: str, decision: str = "approved", reason: str = "") -> None:
    person = Person(IDP, f"{checker}-sub", checker)
    with db.write() as session:
        review.decide(session, CHILD, review.key_for(session, CHILD, name), person, decision, reason=reason)


def _settle(db, **policy) -> review.Settled | None:
    with db.read() as session:
        return review.settle(session, CHILD, review.ReviewPolicy(**policy))


def _outcomes(settled: review.Settled) -> dict[str, review.FileOutcome]:
    return {key.split("/outputs", 1)[1]: outcome for key, outcome in settled.files.items()}


def test_the_checks_mark_exactly_these_files_never_releasable(db):
    with db.read() as session:
        shown = {f.name: f.never_releasable for f in review.describe(session, CHILD).files}
    assert {name for name, why in shown.items() if why} == set(NEVER)
    for name, words in NEVER.items():
        assert words in shown[name]


@pytest.mark.parametrize("name", list(NEVER))
def test_no_checker_can_approve_it_with_a_reason_nor_two_of_them(db, name):
    for checker in ("carol", "dave"):
        with pytest.raises(review.NeverReleasable, match=f"{name} can never be released") as refused:
            _decide(db, name, checker, reason="I looked and it is fine")
        assert NEVER[name] in str(refused.value)
    for other in set(FILES) - set(NEVER):
        for checker in ("carol", "dave"):
            _decide(db, other, checker, reason="checked by hand")
    for required in (1, 2):
        settled = _settle(db, required_approvals=required)
        assert settled is not None
        assert settled.outcome is review.ChildOutcome.PARTIALLY_RELEASED
        outcomes = _outcomes(settled)
        assert {n for n, o in outcomes.items() if o is review.FileOutcome.APPROVED} == set(FILES) - set(NEVER)
    with db.read() as session:
        assert session.scalars(select(ReviewDecision).where(ReviewDecision.key.contains(name))).all() == []


def test_auto_release_and_approvals_written_around_the_guard_release_none_of_them(db):
    with db.write() as session:
        for record in session.scalars(select(HeldFileRecord)):
            record.verdict = "pass"  # as if every rule had passed: auto-release would take everything
            for checker in ("carol", "dave"):  # and approvals stored without decide()
                session.add(
                    ReviewDecision(
                        child_id=CHILD,
                        key=record.key,
                        checker_issuer=IDP,
                        checker_subject=f"{checker}-sub",
                        checker=checker,
                        decision="approved",
                    )
                )
    for policy in ({"auto_release": True}, {"required_approvals": 2}):
        outcomes = _outcomes(_settle(db, **policy))
        assert {n for n, o in outcomes.items() if o is review.FileOutcome.REJECTED} == set(NEVER)


@pytest.fixture
def tre_api(db, tmp_path):
    """The TRE's own API over HTTP, as the CLI and the pages reach it; yields its URL and a token maker."""
    with served_tre_api(db, tmp_path / "idp") as (url, issue):
        yield url, lambda checker: issue(checker, "output-checker", f"{checker}-sub")


def test_the_review_api_answers_409_saying_why(tre_api):
    url, token = tre_api
    for checker in ("carol", "dave"):
        headers = {"Authorization": f"Bearer {token(checker)}"}
        for name, words in NEVER.items():
            answer = httpx.post(
                f"{url}/review/v1/children/{CHILD}/decisions",
                json={"name": name, "decision": "approved", "reason": "fine by me"},
                headers=headers,
            )
            assert answer.status_code == 409, answer.text
            assert words in answer.json()["detail"], answer.text
        shown = httpx.get(f"{url}/review/v1/children/{CHILD}", headers=headers).json()
        assert {f["name"] for f in shown["files"] if f["never_releasable"]} == set(NEVER)
        ok = httpx.post(
            f"{url}/review/v1/children/{CHILD}/decisions",
            json={"name": "/outputs/fine.csv", "decision": "approved"},
            headers=headers,
        )
        assert ok.status_code == 200


def test_the_cli_prints_why_and_exits_non_zero(db, tre_api):
    from fivesafes_tes.cli import app

    url, token = tre_api
    env = {"FIVESAFES_TRE_URL": url, "FIVESAFES_TRE_TOKEN": token("carol")}
    for name, words in NEVER.items():
        result = CliRunner().invoke(
            app, ["review", "approve", CHILD, name, "--reason", "fine by me"], env=env
        )
        assert result.exit_code != 0, result.output
        assert words in " ".join(result.output.split()), result.output
    approved = CliRunner().invoke(app, ["review", "approve", CHILD, "/outputs/fine.csv"], env=env)
    assert approved.exit_code == 0, approved.output
    with db.read() as session:
        assert [(d.key, d.checker_subject) for d in session.scalars(select(ReviewDecision))] == [
            (f"held/{CHILD}/outputs/outputs/fine.csv", "carol-sub")
        ]


# --- end to end: the gateway never gets them -------------------------------------------------------

SCRIPT = "\n".join(
    ["mkdir -p /outputs/acro"]
    + [f"printf '%s' '{text}' > {name}" for name, text in FILES.items()]
    + ["echo done"]
)
TASK = {
    "executors": [{"image": BUSYBOX_IMAGE, "command": ["sh", "/analysis/run.sh"]}],
    "inputs": [{"path": "/analysis/run.sh", "content": SCRIPT}],
    "outputs": [{"path": "/outputs", "url": "s3://results/out", "type": "DIRECTORY"}],
    "tags": {"tres": "uk-tre"},
}


docker_client = images.docker_client


@pytest.fixture
def stack(tmp_path, docker_client):
    images.ensure_busybox_image(docker_client)
    with devstack.start(tmp_path / "stack", agents=True, executor="docker") as running:
        yield running


def test_the_child_ends_without_them_and_the_gateway_never_gets_them(stack):
    uk = stack.agents["uk-tre"]
    uk.policy = uk.policy.model_copy(update={"checks": ChecksConfig.model_validate(CHECKS)})
    alice = httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {stack.token('alice')}"}, timeout=30
    )
    task_id = alice.post(f"{TES}/tasks", json=TASK).json()["id"]
    deadline = time.monotonic() + 90
    while (stage := _stage(alice, task_id)) != "awaiting_review":
        assert time.monotonic() < deadline, f"stuck at {stage}"
        time.sleep(0.2)
    with uk.db.read() as session:
        child = session.scalars(select(LocalChild.child_id).where(LocalChild.task_id == task_id)).one()
        held = review.describe(session, child).files
    assert {f.name for f in held if f.never_releasable} == set(NEVER)
    checker = httpx.Client(
        base_url=stack.tre_url("uk-tre"),
        headers={"Authorization": f"Bearer {stack.tre_token('uk-checker', 'output-checker', 'uk-tre')}"},
        timeout=30,
    )
    for file in held:
        answer = checker.post(
            f"/review/v1/children/{child}/decisions",
            json={"name": file.name, "decision": "approved", "reason": "looks fine"},
        )
        assert answer.status_code == (409 if file.never_releasable else 200), answer.text
    while (stage := _stage(alice, task_id)) != "partially_released":
        assert time.monotonic() < deadline, f"stuck at {stage}"
        time.sleep(0.2)
    with devstack.Database(stack.settings.effective_database_url).read() as session:
        released = set(session.scalars(select(ReleasedFile.name)))
    assert released == {f.name for f in held if not f.never_releasable}
    results = ObjectStore.from_settings(stack.settings.results)
    stored = {o.key for o in results.list(f"released/{task_id}/")}  # (moto: one S3 per process)
    assert len(stored) == len(released)
    assert not any(name.lstrip("/") in key for key in stored for name in NEVER)


def _stage(http: httpx.Client, task_id: str) -> str:
    return http.get(f"{TES}/tasks/{task_id}", params={"view": "BASIC"}).json()["logs"][0]["metadata"]["stage"]
