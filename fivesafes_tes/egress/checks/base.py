"""What every automated disclosure rule is: a small object that reads one held file and says pass,
review or fail, with findings a person can read (which column, which row, which rule, which threshold).

A rule is one module in this package plus one line in the registry (`__init__.py`). Rules never
raise for bad input: content they cannot understand is itself a finding. Rules that crash or time
out anyway are failed closed by the runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from fivesafes_tes.egress.held import HeldFile


class Verdict(StrEnum):
    PASS = "pass"
    REVIEW = "review"  # a person must look before it can leave
    FAIL = "fail"  # must not leave as it is

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    @staticmethod
    def worst(verdicts: list[Verdict]) -> Verdict:
        return max(verdicts, key=lambda v: v.severity, default=Verdict.PASS)


_SEVERITY = {Verdict.PASS: 0, Verdict.REVIEW: 1, Verdict.FAIL: 2}


@dataclass(frozen=True)
class Finding:
    """One thing a rule noticed. `excerpt` is masked: it never carries a whole identifier or row.

    `never_release` marks the file as one no checker may approve (a `DONT_RELEASE` marking, or a
    failure of a rule the TRE configured so): it is data, so no wording of `message` decides it."""

    verdict: Verdict
    message: str
    column: str | None = None
    row: int | None = None  # 1-based data row (tables) or line (text)
    excerpt: str | None = None
    threshold: str | None = None
    never_release: bool = False


@dataclass
class RuleResult:
    rule: str
    version: str
    verdict: Verdict
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None  # set when the runner failed the rule closed (crash, timeout, nonsense)
    seconds: float = 0.0


@dataclass(frozen=True)
class CheckContext:
    """The other files held for the same child (ACRO's results.json speaks about its siblings). Every
    `HeldFile` a rule sees has its local, read-only copy."""

    files: tuple[HeldFile, ...]
    project: str = ""


class Rule(Protocol):
    name: ClassVar[str]
    version: ClassVar[str]

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        """Read `file` (streaming: files may be larger than memory) and judge it under `config`."""
