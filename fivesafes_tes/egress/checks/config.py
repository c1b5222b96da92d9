"""How a TRE configures its disclosure rules: the `checks:` section of its policy file.

Every key has a safe default, so an empty section is a working, strict configuration. A project may
override any part of it under `projects:`; the override is merged into the TRE's settings (mappings
merge key by key, lists and values replace) and the result is validated like the TRE's own.

```yaml
checks:
  enabled: [file_type, acro, small_cell, record_level, identifiers]
  file_type: {max_bytes: 52428800, extension_mismatch: fail}
  small_cell: {threshold: 10, zeros: review}
  projects:
    diabetes-cancer:
      small_cell: {threshold: 20}
```
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MIB = 1 << 20
GIB = 1 << 30

TEXT_TYPES = [
    "text/plain",
    "text/csv",
    "text/tab-separated-values",
    "application/json",
    "application/x-ndjson",
]
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
OPAQUE_TYPES = ["image/png", "image/jpeg", "image/gif", "application/pdf", XLSX, DOCX]
IDENTIFIER_KINDS = ["nhs_number", "nric_fin", "email", "phone", "postcode", "date_of_birth"]


# What the runner applies around a rule, not handed to the rule itself.
_RUNNER_KEYS = {"never_release"}


class RuleConfig(BaseModel):
    """What every rule's section has."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Wall-clock limit for one file; past it the rule fails closed.",
    )
    never_release: bool = Field(
        default=False,
        description="A file this rule fails can never be released: no checker may approve it, "
        "whatever their reason, and it is withheld.",
    )


class FileTypeConfig(RuleConfig):
    allowed_types: list[str] = Field(
        default_factory=lambda: list(TEXT_TYPES),
        description="Media types (detected from content) that pass: text the other rules can read.",
    )
    review_types: list[str] = Field(
        default_factory=lambda: list(OPAQUE_TYPES),
        description="Media types that need a person's eye: no automated rule can read inside them. "
        "Anything in neither list fails.",
    )
    max_bytes: int = Field(default=100 * MIB, gt=0, description="Larger files fail unread.")
    extension_mismatch: Literal["review", "fail"] = Field(
        default="review", description="When the content is not what the file name's extension says."
    )


class AcroConfig(RuleConfig):
    metadata: Literal["pass", "review"] = Field(
        default="review", description="ACRO's own files: results.json, config.json, checksums/."
    )
    unlisted: Literal["review", "fail"] = Field(
        default="review", description="A file in an ACRO output folder that results.json does not list."
    )
    exception: Literal["review", "fail"] = Field(
        default="review", description="An output ACRO failed for which the researcher requested an exception."
    )
    checksum_mismatch: Literal["review", "fail"] = Field(
        default="fail", description="A file whose SHA-256 differs from the one ACRO wrote in checksums/."
    )
    min_safe_threshold: int = Field(
        default=10,
        ge=0,
        description="ACRO passes from a session run with a lower safe_threshold need review.",
    )
    min_safe_dof_threshold: int = Field(
        default=10, ge=0, description="Same for safe_dof_threshold (degrees of freedom of models)."
    )
    dont_release_markers: list[str] = Field(
        default_factory=lambda: ["DONT_RELEASE", "DO_NOT_RELEASE"],
        description="Names (file, ACRO output id, ACRO exception or comment) containing one of these "
        "fail and can never be released; matched ignoring case and '-', '_' or spaces between words.",
    )
    max_cell_findings: int = Field(
        default=50,
        ge=1,
        description="Cells ACRO flagged are listed one finding each up to this many per file.",
    )


class _TabularConfig(RuleConfig):
    """Sections of rules that validate their own settings: only what the TRE wrote (and `timeout_s`)
    is handed on, so each rule's own defaults apply and its own model may add keys. The defaults
    declared here document those of the rules."""

    model_config = ConfigDict(extra="allow")


class SmallCellConfig(_TabularConfig):
    threshold: int = Field(default=10, ge=1, description="Counts below this (and above zero) fail.")
    zeros: Literal["pass", "review", "fail"] = Field(
        default="review",
        description="Zero cells: a structural zero can still disclose (everyone/no one in a group).",
    )
    counts_by_content: bool = Field(
        default=True,
        description="Count columns are also found by their content (whole numbers, none negative), "
        "whatever they are called, so that the cells of any cross-tabulation are checked; ids, codes, "
        "ages, years, rates, row numbers and `label_columns` are not counts. false: only columns "
        "named like counts (n, count, total, patients...) and `count_columns`.",
    )
    label_columns: list[str] = Field(
        default_factory=list,
        description="Columns never taken for counts by their content: categories coded by integers "
        "under a name that does not say so.",
    )


class RecordLevelConfig(_TabularConfig):
    max_rows: int = Field(
        default=1000, ge=1, description="Tables with more data rows than this look like record-level data."
    )
    max_unique_fraction: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="A column whose values are this unique across many rows looks like a per-person key.",
    )


class IdentifiersConfig(_TabularConfig):
    kinds: dict[str, bool] = Field(
        default_factory=lambda: dict.fromkeys(IDENTIFIER_KINDS, True),
        description="Direct-identifier detectors, each on or off: NHS numbers (check digit), Singapore "
        "NRIC/FIN (check letter), emails, full postcodes, full dates of birth. Kinds not named keep "
        "their default.",
    )

    @field_validator("kinds")
    @classmethod
    def _defaults_for_unnamed_kinds(cls, kinds: dict[str, bool]) -> dict[str, bool]:
        return {**dict.fromkeys(IDENTIFIER_KINDS, True), **kinds}


class ChecksConfig(BaseModel):
    """A TRE's disclosure rules. Sections for rules registered beyond the five built in are accepted
    as `{timeout_s, ...}` and handed to the rule as they are."""

    model_config = ConfigDict(extra="allow")

    enabled: list[str] = Field(
        default_factory=lambda: ["file_type", "acro", "small_cell", "record_level", "identifiers"],
        description="Rules run on every held file, in this order. With none, every file needs review.",
    )
    workers: int = Field(default=2, ge=1, le=64, description="Files checked at once, one process each.")
    threads: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Threads each check process may use on one file (CSV parsing, identifier "
        "pre-filtering). 1: every rule works serially.",
    )
    deny_network: bool = Field(
        default=True,
        description="Check processes may open no socket (a seccomp filter; Linux x86_64 and aarch64): "
        "a file that exploits a parser cannot send what it reads. false only where seccomp is missing.",
    )
    confine_files: bool = Field(
        default=True,
        description="Check processes may read only the files they judge and the code they run, and write "
        "nothing (Landlock, Linux 5.13+): a file that exploits a parser can neither read the agent's "
        "database or token nor change any file. false only where Landlock is missing.",
    )
    worker_memory_bytes: int | None = Field(
        default=4 * GIB,
        ge=256 * MIB,
        description="Address-space limit of a check process: a rule that needs more fails closed "
        "instead of starving the agent. null: no limit.",
    )
    file_type: FileTypeConfig = Field(default_factory=FileTypeConfig)
    acro: AcroConfig = Field(default_factory=AcroConfig)
    small_cell: SmallCellConfig = Field(default_factory=SmallCellConfig)
    record_level: RecordLevelConfig = Field(default_factory=RecordLevelConfig)
    identifiers: IdentifiersConfig = Field(default_factory=IdentifiersConfig)
    projects: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Project name -> a partial `checks:` section for that project."
    )

    @model_validator(mode="after")
    def _known_rules(self) -> ChecksConfig:
        from fivesafes_tes.egress.checks import RULES

        unknown = [name for name in self.enabled if name not in RULES]
        if unknown:
            raise ValueError(f"checks.enabled names unknown rules {unknown}; known rules: {', '.join(RULES)}")
        if len(set(self.enabled)) != len(self.enabled):
            raise ValueError("checks.enabled names a rule twice")
        extra = self.__pydantic_extra__ or {}
        for key, value in extra.items():
            if key not in RULES:
                raise ValueError(f"checks.{key} is neither a setting nor a registered rule")
            extra[key] = _TabularConfig.model_validate(value)
        for project, override in self.projects.items():
            if "projects" in override:
                raise ValueError(f"checks.projects.{project} cannot itself have projects")
            try:
                self._merged(override)
            except ValueError as exc:
                raise ValueError(f"checks.projects.{project}: {exc}") from exc
        return self

    def _merged(self, override: dict[str, Any]) -> ChecksConfig:
        base = self.model_dump(exclude={"projects"}, exclude_unset=True)
        return ChecksConfig.model_validate(_deep_merge(base, override))

    def for_project(self, project: str) -> ChecksConfig:
        """The configuration that applies to one project's outputs (without `projects`)."""
        override = self.projects.get(project)
        if override is None:
            return self.model_copy(update={"projects": {}})
        return self._merged(override)

    def rule_config(self, name: str) -> dict[str, Any]:
        """What the rule `name` receives as its `config` (a copy: rules cannot change it)."""
        section = self._section(name)
        if isinstance(section, _TabularConfig):
            own = section.model_dump(exclude_unset=True, exclude=_RUNNER_KEYS)
            return copy.deepcopy({**own, "timeout_s": section.timeout_s})
        return copy.deepcopy(section.model_dump(exclude=_RUNNER_KEYS))

    def _section(self, name: str) -> RuleConfig:
        section = getattr(self, name, None) if name in type(self).model_fields else None
        if section is None:
            section = (self.__pydantic_extra__ or {}).get(name)
        return section if isinstance(section, RuleConfig) else RuleConfig()

    def timeout_for(self, name: str) -> float:
        return float(self.rule_config(name)["timeout_s"])

    def never_release_for(self, name: str) -> bool:
        """Whether a file the rule `name` fails is never released (the runner marks its findings)."""
        return self._section(name).never_release

    def fingerprint(self) -> str:
        """SHA-256 of the settings that judge (`projects` aside: use `for_project` first), for the
        disclosure record."""
        settings = self.model_dump(mode="json", exclude={"projects"})
        canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
