"""The documentation stays true to the code: every setting is documented, every documented one exists."""

from __future__ import annotations

import re
from pathlib import Path

from fivesafes_tes.settings import AgentSettings, GatewaySettings, environment_variables

ROOT = Path(__file__).resolve().parent.parent


def test_every_gateway_setting_is_documented_and_nothing_else():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    section = doc.split("## Gateway", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(FIVESAFES_[A-Z_]+)`", section))
    assert documented == set(environment_variables(GatewaySettings))


def test_every_agent_setting_is_documented_and_nothing_else():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    section = doc.split("## TRE agent", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(FIVESAFES_AGENT_[A-Z_]+)`", section))
    assert documented == set(environment_variables(AgentSettings))


def test_the_policy_example_in_the_docs_loads(tmp_path):
    from fivesafes_tes.agent.policy import TrePolicy

    doc = (ROOT / "docs" / "configuration.md").read_text()
    example = doc.split("### TRE policy file", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    path = tmp_path / "policy.yaml"
    path.write_text(example)
    policy = TrePolicy.load(path)
    assert policy.image_allowed("registry.tre.example/approved/stats:1")
    assert not policy.image_allowed("docker.io/library/alpine")
    assert list(policy.datasets_for("diabetes-cancer")) == ["omop"]
    assert policy.checks.for_project("diabetes-cancer").small_cell.threshold == 20
    assert policy.review.required_approvals == 1


def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## ", 2)[1]
    assert setup.startswith("Set up")
    assert "make demo" in setup
    assert "make test" in setup
    assert "make test" in (ROOT / ".ci" / "run").read_text()
