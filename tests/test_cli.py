"""The `fivesafes-tes` commands a researcher and an operator type, against a live dev gateway."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fivesafes_tes import devstack
from fivesafes_tes.cli import app
from tests.conftest import TRE_IDP, served_tre_api

runner = CliRunner()


@pytest.fixture
def stack(tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("FIVESAFES_DATA_DIR", str(data))
    with devstack.start(data) as running:
        monkeypatch.setenv("FIVESAFES_PUBLIC_URL", running.url)
        monkeypatch.setenv("FIVESAFES_TES_URL", running.url)
        yield running


def invoke(*args: str, **env: str):
    return runner.invoke(app, list(args), env=env or None)


def test_token_submit_status_list_cancel_round_trip(stack, tmp_path):
    token = invoke("token", "--user", "carol", "--role", "researcher").stdout.strip()
    assert token.count(".") == 2
    task_file = tmp_path / "task.json"
    task_file.write_text(
        json.dumps({"name": "cli-task", "executors": [{"image": "alpine", "command": ["true"]}]})
    )

    submitted = invoke("submit", str(task_file), "--token", token, "--idempotency-key", "cli-1")
    assert submitted.exit_code == 0, submitted.output
    task_id = submitted.stdout.strip()
    again = invoke("submit", str(task_file), "--token", token, "--idempotency-key", "cli-1")
    assert again.stdout.strip() == task_id

    status = invoke("status", task_id, "--token", token)
    assert status.exit_code == 0
    assert json.loads(status.stdout)["name"] == "cli-task"

    listed = invoke("list", "--token", token)
    assert listed.exit_code == 0
    assert "cli-task" in listed.stdout
    assert "QUEUED" in listed.stdout

    assert invoke("cancel", task_id, "--token", token).exit_code == 0
    assert (
        json.loads(invoke("status", task_id, "--token", token, "--view", "MINIMAL").stdout)["state"]
        == "CANCELED"
    )


def test_refusals_are_explained_and_exit_non_zero(stack, tmp_path):
    token = invoke("token", "--user", "carol").stdout.strip()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"executors": [{"image": "alpine"}]}))
    result = invoke("submit", str(bad), "--token", token)
    assert result.exit_code == 1
    assert "executors.0.command" in result.output
    not_json = tmp_path / "nope.json"
    not_json.write_text("{")
    assert invoke("submit", str(not_json), "--token", token).exit_code == 2
    assert invoke("list").exit_code == 2  # no token: says how to get one
    assert invoke("status", "01a00000-0000-7000-8000-000000000000", "--token", token).exit_code == 1


def test_audit_verify_reports_an_intact_chain_and_a_tampered_one(stack, tmp_path, monkeypatch):
    token = invoke("token", "--user", "carol").stdout.strip()
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps({"executors": [{"image": "alpine", "command": ["true"]}]}))
    invoke("submit", str(task_file), "--token", token)
    invoke("submit", str(task_file), "--token", token)
    intact = invoke("audit", "verify")
    assert intact.exit_code == 0
    assert "intact" in intact.stdout

    from sqlalchemy import text

    from fivesafes_tes.db import Database

    db = Database(stack.settings.effective_database_url)
    with db.write() as session:
        session.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE seq = 1"))
    db.dispose()
    broken = invoke("audit", "verify")
    assert broken.exit_code == 1
    assert "hash_mismatch" in broken.stdout


def test_audit_anchor_exposes_a_cut_back_tail(stack, tmp_path):
    token = invoke("token", "--user", "carol").stdout.strip()
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps({"executors": [{"image": "alpine", "command": ["true"]}]}))
    for _ in range(3):
        invoke("submit", str(task_file), "--token", token)
    first = invoke("audit", "verify")
    anchor = first.stdout.strip().splitlines()[-1].split()[-1]
    newest = int(anchor.split(":")[0])
    assert newest >= 3

    from sqlalchemy import text

    from fivesafes_tes.db import Database

    # A careful attacker removes the newest record and moves the head back to the one before.
    db = Database(stack.settings.effective_database_url)
    with db.write() as session:
        previous = session.execute(
            text("SELECT hash FROM audit_log WHERE seq = :s"), {"s": newest - 1}
        ).scalar_one()
        session.execute(text("DELETE FROM audit_log WHERE seq = :s"), {"s": newest})
        session.execute(text("UPDATE audit_head SET seq = :s, hash = :h"), {"s": newest - 1, "h": previous})
    db.dispose()
    assert invoke("audit", "verify").exit_code == 0  # the chain alone cannot tell
    caught = invoke("audit", "verify", "--anchor", anchor)
    assert caught.exit_code == 1
    assert "anchor_mismatch" in caught.stdout
    assert invoke("audit", "verify", "--anchor", "nonsense").exit_code == 2


# --- the in-TRE commands: through the TRE's own API, as the person whose token it is ----------------


@pytest.fixture
def tre_api(tmp_path, monkeypatch):
    from fivesafes_tes.agent.loop import open_database
    from fivesafes_tes.agent.tables import HeldFileRecord, LocalChild, LocalProject
    from fivesafes_tes.settings import AgentSettings

    db = open_database(AgentSettings(tre="uk-tre", data_dir=tmp_path / "agent"))
    with db.write() as session:
        session.add(LocalProject(name="alpha", members=["alice", "carol"]))
        session.add(
            LocalChild(
                child_id=CHILD,
                task_id="t",
                attempt=1,
                stage="awaiting_review",
                project="alpha",
                username="alice",
                submitter_issuer=TRE_IDP,
                submitter_subject="alice-sub",
                task={},
            )
        )
        session.add(
            HeldFileRecord(
                child_id=CHILD,
                key="held/outputs/table.csv",
                name="/outputs/table.csv",
                kind="output",
                size=1,
                sha256="0" * 64,
            )
        )
    with served_tre_api(db, tmp_path / "idp") as (url, issue):
        monkeypatch.setenv("FIVESAFES_TRE_URL", url)

        def token(name: str, subject: str, role: str) -> str:
            return issue(name, role, subject)

        yield db, token
    db.dispose()


CHILD = "01a20000-0000-7000-8000-000000000001"


def test_checkers_and_tre_admins_decide_through_the_tre_api_as_their_token_says(tre_api):
    from sqlalchemy import select

    from fivesafes_tes.agent.tables import LocalDecision, ReviewDecision

    db, token = tre_api
    carol = token("carol", "carol-sub", "output-checker")
    assert (
        invoke("review", "approve", CHILD, "/outputs/table.csv", "--by", "carol").exit_code == 2
    )  # no --by at all
    missing = invoke("review", "approve", CHILD, "/outputs/table.csv")
    assert missing.exit_code == 2
    assert "FIVESAFES_TRE_TOKEN" in missing.output
    assert "Traceback" not in missing.output
    listed = invoke("review", "list", "--token", carol)
    assert listed.exit_code == 0
    assert "alice" in listed.stdout
    assert "1 review" in listed.stdout

    # alice's own subject, whatever name her token shows, is refused with the reason
    own = invoke(
        "review",
        "approve",
        CHILD,
        "/outputs/table.csv",
        FIVESAFES_TRE_TOKEN=token("Dr A", "alice-sub", "output-checker"),
    )
    assert own.exit_code == 1
    assert "submitted this task" in own.output
    approved = invoke("review", "approve", CHILD, "/outputs/table.csv", FIVESAFES_TRE_TOKEN=carol)
    assert approved.exit_code == 0, approved.output
    rejected = invoke(
        "review",
        "reject",
        CHILD,
        "all",
        "--reason",
        "small cells",
        "--token",
        token("erin", "erin-sub", "output-checker"),
    )
    assert rejected.exit_code == 0, rejected.output

    dora = token("dora", "dora-sub", "tre-admin")
    assert invoke("tre", "approve", "alpha", "--user", "Alice", "--token", dora).exit_code == 0
    refused = invoke("tre", "approve", "alpha", "--token", carol)  # a checker is no TRE admin
    assert refused.exit_code == 1
    assert "Refused" in refused.output
    shown = invoke("tre", "projects", "--token", dora)
    assert shown.exit_code == 0
    assert "approved by" in shown.stdout
    assert "dora" in shown.stdout
    with db.read() as session:
        decisions = {
            (d.checker_subject, d.checker, d.decision) for d in session.scalars(select(ReviewDecision))
        }
        person = session.get(LocalDecision, ("alpha", "alice"))
    assert decisions == {("carol-sub", "carol", "approved"), ("erin-sub", "erin", "rejected")}
    assert person.decided_by == f"{TRE_IDP}#dora-sub"
    assert person.decided_by_name == "dora"


def test_a_checker_reads_the_requests_activity_crate_as_a_table_and_saves_it(tre_api, tmp_path):
    _, token = tre_api
    carol = token("carol", "carol-sub", "output-checker")
    dora = token("dora", "dora-sub", "tre-admin")
    assert invoke("tre", "approve", "alpha", "--reason", "ethics 24/NW/1", "--token", dora).exit_code == 0
    saved = tmp_path / "request.json"
    shown = invoke("review", "crate", CHILD, "--output", str(saved), "--token", carol)
    assert shown.exit_code == 0, shown.output
    for words in ("Sign-off by", "pending", "Validation of", "completed", "dora"):
        assert words in shown.stdout, words
    crate = json.loads(saved.read_text())
    graph = {e["@id"]: e for e in crate["@graph"]}
    assert (
        "project alpha: approved by dora (ethics 24/NW/1)"
        in graph["#fivesafes-tes-signoff-uk-tre"]["description"]
    )
    refused = invoke("review", "crate", CHILD, "--token", dora)  # an admin is no output checker
    assert refused.exit_code == 1
    assert "Refused" in refused.output


@pytest.mark.parametrize(
    "command",
    [["review", "list"], ["review", "show", CHILD], ["review", "approve", CHILD, "all"], ["tre", "projects"]],
)
def test_the_in_tre_commands_say_in_one_line_what_to_set(command):
    """Never a traceback: what is missing or wrong is one line naming the variable to set."""
    cases = [
        ({"FIVESAFES_TRE_URL": None, "FIVESAFES_TRE_TOKEN": None}, 2, "set FIVESAFES_TRE_URL"),
        (
            {"FIVESAFES_TRE_URL": "http://127.0.0.1:9", "FIVESAFES_TRE_TOKEN": None},
            2,
            "set FIVESAFES_TRE_TOKEN",
        ),
        ({"FIVESAFES_TRE_URL": "127.0.0.1:9", "FIVESAFES_TRE_TOKEN": "t"}, 1, "'http://'"),
        ({"FIVESAFES_TRE_URL": "http://127.0.0.1:9", "FIVESAFES_TRE_TOKEN": "t"}, 1, "Cannot reach"),
    ]
    for env, code, words in cases:
        result = runner.invoke(app, command, env=env)
        assert result.exit_code == code, (env, result.output)
        assert words in result.output, (env, result.output)
        assert "Traceback" not in result.output, (env, result.output)
        assert len(result.output.strip().splitlines()) == 1, (env, result.output)


def test_dev_prints_each_roles_environment_and_it_works_as_printed(tmp_path, monkeypatch):
    """What `fivesafes-tes dev` prints is pasted into a shell: every export line must work as it is."""
    import io
    import shlex

    from rich.console import Console

    from fivesafes_tes.cli import _output, dev

    monkeypatch.setattr(_output, "console", Console(file=io.StringIO(), width=80))
    monkeypatch.setattr(_output, "err", Console(file=io.StringIO(), width=80))
    with pytest.warns(UserWarning, match="NOT SANDBOXED"):
        stack = devstack.start(tmp_path / "dev", agents=True, executor="local", allow_images=["alpine*"])
    try:
        dev._print_dev_guide(
            stack, tmp_path / "dev", fresh=False, executor="local", images=["alpine*"], auto_release=False
        )
        printed = _output.console.file.getvalue()
        exports = [
            dict(word.split("=", 1) for word in shlex.split(line)[1:])
            for line in printed.splitlines()
            if line.strip().startswith("export ")
        ]
        assert [sorted(e) for e in exports] == [
            ["FIVESAFES_TES_TOKEN", "FIVESAFES_TES_URL"],
            ["FIVESAFES_TRE_TOKEN", "FIVESAFES_TRE_URL"],
            ["FIVESAFES_TRE_TOKEN", "FIVESAFES_TRE_URL"],
        ]
        assert "images fivesafes/*, alpine*" in printed
        assert "an output checker decides" in printed
        researcher, *checkers = exports
        listed = runner.invoke(app, ["list"], env=researcher)
        assert listed.exit_code == 0, listed.output
        for checker, tre in zip(checkers, stack.agents, strict=True):
            assert checker["FIVESAFES_TRE_URL"] == stack.tre_url(tre)
            review = runner.invoke(app, ["review", "list"], env=checker)
            assert review.exit_code == 0, _output.err.file.getvalue()
            assert _output.console.file.getvalue().count("awaiting review") == 1 + list(stack.agents).index(
                tre
            )
        assert all(a.policy.image_allowed("alpine:3.20") for a in stack.agents.values())
    finally:
        stack.stop()


@pytest.mark.parametrize(
    "command",
    [["results", "some-task"], ["results", "some-task", "--crate"], ["admin", "projects"], ["list"]],
)
def test_an_unreachable_gateway_is_one_line_too(command):
    result = runner.invoke(app, [*command, "--url", "http://127.0.0.1:9", "--token", "t"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
