"""Automated disclosure checks: one module per rule, a registry of them, their configuration and
the runner that applies them to held files and fails closed when a rule cannot judge.

Adding a rule is a module here plus one line in `RULES`. Rule modules are imported only when a rule
runs, so a rule whose module is missing or broken fails its checks instead of breaking the airlock.
"""

from __future__ import annotations

import importlib

from fivesafes_tes.egress.checks.base import CheckContext, Finding, Rule, RuleResult, Verdict
from fivesafes_tes.egress.checks.config import ChecksConfig
from fivesafes_tes.egress.checks.runner import FileReport, run_checks
from fivesafes_tes.egress.held import HeldFile

RULES: dict[str, str] = {
    "file_type": "fivesafes_tes.egress.checks.file_type:FileTypeRule",
    "acro": "fivesafes_tes.egress.checks.acro:AcroRule",
    "small_cell": "fivesafes_tes.egress.checks.small_cell:SmallCellRule",
    "record_level": "fivesafes_tes.egress.checks.record_level:RecordLevelRule",
    "identifiers": "fivesafes_tes.egress.checks.identifiers:IdentifiersRule",
}


def load_rule(spec: str) -> Rule:
    """An instance of the rule class named by a registry entry ("package.module:Class")."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ValueError(f"rule spec {spec!r} is not 'module:Class'")
    rule: Rule = getattr(importlib.import_module(module_name), class_name)()
    return rule


def rule(name: str) -> Rule:
    try:
        spec = RULES[name]
    except KeyError:
        raise LookupError(f"no disclosure rule named {name!r}; known rules: {', '.join(RULES)}") from None
    return load_rule(spec)


__all__ = [
    "RULES",
    "CheckContext",
    "ChecksConfig",
    "FileReport",
    "Finding",
    "HeldFile",
    "Rule",
    "RuleResult",
    "Verdict",
    "load_rule",
    "rule",
    "run_checks",
]
