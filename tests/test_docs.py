"""The documentation stays true to the code: every setting is documented, every documented one exists."""

from __future__ import annotations

import re
from pathlib import Path

from fivesafes_tes.settings import GatewaySettings

ROOT = Path(__file__).resolve().parent.parent


def test_every_gateway_setting_is_documented_and_nothing_else():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    section = doc.split("## Gateway", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`FIVESAFES_([A-Z_]+)`", section))
    assert documented == {name.upper() for name in GatewaySettings.model_fields}


def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## ", 2)[1]
    assert setup.startswith("Set up") and "make demo" in setup and "make test" in setup
    assert "make test" in (ROOT / ".ci" / "run").read_text()
