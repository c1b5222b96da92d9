"""What an agent settles at start: a data directory every task's mounts can come from (root's default
included), and the deployment id it labels its containers with, kept across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from fivesafes_tes import settings as settings_module
from fivesafes_tes.agent.loop import Agent, CannotStart, deployment_id, open_database, unmountable
from fivesafes_tes.agent.policy import Dataset, InvalidPolicy, TrePolicy
from fivesafes_tes.executors.sandbox import POLICY
from fivesafes_tes.settings import AgentSettings, GatewaySettings


def test_roots_default_data_dir_is_one_the_sandbox_may_mount(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIVESAFES_DATA_DIR", raising=False)
    monkeypatch.delenv("FIVESAFES_AGENT_DATA_DIR", raising=False)
    monkeypatch.setattr(settings_module.os, "geteuid", lambda: 0)
    monkeypatch.setenv("HOME", "/root")
    agent = AgentSettings(tre="uk-tre")
    assert GatewaySettings().data_dir == Path("/var/lib/fivesafes-tes")
    assert agent.data_dir == Path("/var/lib/fivesafes-tes/agent")
    assert unmountable(agent, TrePolicy()) == []

    monkeypatch.setattr(settings_module.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", "/home/ada")
    assert GatewaySettings().data_dir == Path("/home/ada/.local/share/fivesafes-tes")


def test_an_agent_whose_tasks_could_never_mount_their_work_refuses_to_start(tmp_path: Path) -> None:
    assert "/root" in POLICY.forbidden_sources
    settings = AgentSettings(tre="uk-tre", data_dir=Path("/root/.local/share/fivesafes-tes/agent"))
    policy = TrePolicy(datasets={"omop": Dataset(path=Path("/etc/omop")), "ok": Dataset(path=tmp_path)})
    problems = unmountable(settings, policy)
    assert len(problems) == 2
    assert problems[0].startswith("FIVESAFES_AGENT_DATA_DIR: host path '/root/")
    assert "/root" in problems[0]
    assert problems[1].startswith("dataset omop: host path '/etc/omop'")

    agent = Agent(
        AgentSettings(tre="uk-tre", data_dir=tmp_path / "agent"),
        client=None,  # type: ignore[arg-type]
        executor=None,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        policy=policy,
    )
    with pytest.raises(CannotStart, match="dataset omop"):
        agent.start()


def test_the_deployment_id_is_made_once_and_kept_with_the_agents_database(tmp_path: Path) -> None:
    first = open_database(AgentSettings(tre="uk-tre", data_dir=tmp_path / "a"))
    mine = deployment_id(first)
    assert deployment_id(first) == mine
    first.dispose()
    assert deployment_id(open_database(AgentSettings(tre="uk-tre", data_dir=tmp_path / "a"))) == mine
    other = deployment_id(open_database(AgentSettings(tre="uk-tre", data_dir=tmp_path / "b")))
    assert other != mine  # another stack's uk-tre


def test_the_agent_command_says_in_one_line_why_it_cannot_start(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fivesafes_tes.cli import app

    env = {
        "FIVESAFES_AGENT_TRE": "uk-tre",
        "FIVESAFES_AGENT_TOKEN": "t",
        "FIVESAFES_AGENT_EXECUTOR": "local",
        "FIVESAFES_AGENT_DATA_DIR": str(tmp_path / "agent"),
        "FIVESAFES_AGENT_DATABASE_URL": f"sqlite:///{tmp_path / 'agent.db'}",
    }
    policy = tmp_path / "policy.yaml"
    policy.write_text("datasets: {omop: {path: /root/omop}}\n")
    with pytest.warns(UserWarning, match="NOT SANDBOXED"):
        result = CliRunner().invoke(app, ["agent"], env={**env, "FIVESAFES_AGENT_POLICY_FILE": str(policy)})
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    expected = (
        "Cannot start: dataset omop: host path '/root/omop' may not be mounted into a task: it is (under) "
        "one "
        f"of {', '.join(POLICY.forbidden_sources)} or /"
    )
    assert result.output.strip().splitlines() == [expected]


def test_the_rules_settings_are_parsed_once_when_the_policy_loads(tmp_path: Path) -> None:
    """A mistake in the rules' settings stops the agent at start, not at its first hold; what loads is
    the typed configuration every hold uses as it is."""
    from fivesafes_tes.egress.checks.config import ChecksConfig

    bad = tmp_path / "bad.yaml"
    bad.write_text("max_pids: -1\nchecks:\n  enabled: [file_type, no_such_rule]\n")
    with pytest.raises(InvalidPolicy) as refused:
        TrePolicy.load(bad)
    assert str(bad) in str(refused.value)
    assert "max_pids" in str(refused.value)  # every mistake is named, not only the first
    assert "unknown rules" in str(refused.value)
    good = tmp_path / "good.yaml"
    good.write_text("checks:\n  small_cell: {threshold: 20}\n")
    checks = TrePolicy.load(good).checks
    assert isinstance(checks, ChecksConfig)
    assert checks.small_cell.threshold == 20


def test_the_agent_command_refuses_an_invalid_policy_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fivesafes_tes.cli import app

    policy = tmp_path / "policy.yaml"
    policy.write_text("max_pids: -1\n")
    env = {
        "FIVESAFES_AGENT_TRE": "uk-tre",
        "FIVESAFES_AGENT_TOKEN": "t",
        "FIVESAFES_AGENT_EXECUTOR": "local",
        "FIVESAFES_AGENT_DATA_DIR": str(tmp_path / "agent"),
        "FIVESAFES_AGENT_DATABASE_URL": f"sqlite:///{tmp_path / 'agent.db'}",
        "FIVESAFES_AGENT_POLICY_FILE": str(policy),
    }
    result = CliRunner().invoke(app, ["agent"], env=env)  # refused before any executor is made
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert result.output.strip().startswith(f"Cannot start: {policy}: max_pids:")
