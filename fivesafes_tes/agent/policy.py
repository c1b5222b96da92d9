"""A TRE's own policy: which images may run, how much they may use, which datasets each project
sees. The agent applies it to every task, whatever the gateway already checked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fivesafes_tes.agent.review import ReviewPolicy
from fivesafes_tes.devimages import RUNNER_IMAGE
from fivesafes_tes.egress.checks.config import ChecksConfig
from fivesafes_tes.executors import Limits
from fivesafes_tes.tes.admission import WORKFLOW_LANGUAGES, image_allowed, language_name
from fivesafes_tes.tes.caps import DEFAULT_CAPS, TaskCaps

GIB = 1 << 30


class Dataset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path | None = Field(
        default=None,
        description="Host directory, for the docker and local executors; mounted read-only at /data/<name> "
        "for granted projects.",
    )
    claim: str | None = Field(
        default=None,
        description="PersistentVolumeClaim in the task namespace, for the kubernetes executor; mounted "
        "read-only the same way.",
    )
    url: str | None = Field(
        default=None,
        description="URL the TRE's own TES server reads the dataset from, for the tes (relay) executor.",
    )
    description: str = ""

    @model_validator(mode="after")
    def _has_a_source(self) -> Dataset:
        if self.path is None and self.claim is None and self.url is None:
            raise ValueError("a dataset needs a path (docker), a claim (kubernetes) or a url (tes relay)")
        return self


class InvalidPolicy(ValueError):
    """The TRE policy file cannot be used; the message names the file and each mistake in it."""


def _mistakes(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'policy'}: {error['msg']}"
            for error in exc.errors()
        )
    return str(exc)


class TrePolicy(BaseModel):
    """Safe defaults: no image allowed, modest limits, no dataset granted."""

    model_config = ConfigDict(extra="forbid")

    allowed_images: list[str] = Field(
        default_factory=list, description="fnmatch patterns; empty allows none."
    )
    max_cpu_cores: float = Field(default=2.0, gt=0)
    max_ram_gb: float = Field(default=4.0, gt=0)
    max_disk_gb: float = Field(default=4.0, gt=0)
    max_runtime_s: int = Field(default=3600, gt=0)
    max_pids: int = Field(default=256, gt=0)
    # Per-task caps, applied after the gateway's (so only a lower value changes anything).
    max_executors: int = Field(default=DEFAULT_CAPS.executors, ge=1)
    max_inputs: int = Field(default=DEFAULT_CAPS.inputs, ge=0)
    max_outputs: int = Field(default=DEFAULT_CAPS.outputs, ge=0)
    max_volumes: int = Field(default=DEFAULT_CAPS.volumes, ge=0)
    max_env_vars: int = Field(default=DEFAULT_CAPS.env_vars, ge=0, description="Per executor.")
    datasets: dict[str, Dataset] = Field(default_factory=dict)
    grants: dict[str, list[str]] = Field(default_factory=dict, description="project -> dataset names")
    review: ReviewPolicy = Field(default_factory=ReviewPolicy)
    checks: ChecksConfig = Field(
        default_factory=ChecksConfig, description="Automated rule settings (egress.checks), parsed once."
    )
    # Which workflows the TRE runs. A language is a promise, not a wall: an allowed image that holds an
    # engine can run it under any command, so a TRE that must never run one does not allow its image.
    workflow_languages: list[str] = Field(
        default_factory=list,
        description=(
            "tes (a TES task as given, always run) and the languages run whole by a runner image: cwl, "
            "snakemake. Unset: tes and every language workflow_runners names. An executor running "
            "`fivesafes-workflow <language>` in another is refused."
        ),
    )
    workflow_runners: dict[str, str] = Field(
        default_factory=lambda: {"cwl": RUNNER_IMAGE, "snakemake": RUNNER_IMAGE},
        description="language -> the runner image a request crate's workflow in it runs in; still subject "
        "to allowed_images.",
    )

    @model_validator(mode="after")
    def _languages_have_runners(self) -> TrePolicy:
        if "workflow_languages" not in self.model_fields_set:
            self.workflow_languages = [
                n for n in WORKFLOW_LANGUAGES if n == "tes" or n in self.workflow_runners
            ]
        for field, names in (
            ("workflow_languages", self.workflow_languages),
            ("workflow_runners", self.workflow_runners),
        ):
            unknown = [name for name in names if name not in WORKFLOW_LANGUAGES]
            if unknown:
                raise ValueError(
                    f"{field}: {', '.join(map(repr, unknown))} unknown; a TRE here can run "
                    f"{', '.join(WORKFLOW_LANGUAGES)}"
                )
        bare = [n for n in self.workflow_languages if n != "tes" and not self.workflow_runners.get(n)]
        if bare:
            raise ValueError(
                f"workflow_languages: {', '.join(language_name(n) for n in bare)} needs a runner image: "
                f"name it in workflow_runners (for example {bare[0]}: {RUNNER_IMAGE}) or leave the "
                "language out"
            )
        if "tes" not in self.workflow_languages:  # a TES task is what every task is
            self.workflow_languages = ["tes", *self.workflow_languages]
        return self

    @classmethod
    def load(cls, path: Path | None) -> TrePolicy:
        if path is None:
            return cls()
        text = path.read_text()
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            policy = cls.model_validate(data or {})
        except (ValueError, yaml.YAMLError) as exc:  # pydantic's ValidationError and JSON's are ValueErrors
            raise InvalidPolicy(f"{path}: {_mistakes(exc)}") from None
        unknown = {d for names in policy.grants.values() for d in names} - set(policy.datasets)
        if unknown:
            raise InvalidPolicy(
                f"{path}: grants name datasets that are not defined: {', '.join(sorted(unknown))}"
            )
        return policy

    @property
    def caps(self) -> TaskCaps:
        """This TRE's caps. No tag cap: tags stay at the gateway, a TRE never receives them."""
        return TaskCaps(
            executors=self.max_executors,
            inputs=self.max_inputs,
            outputs=self.max_outputs,
            volumes=self.max_volumes,
            env_vars=self.max_env_vars,
        )

    def image_allowed(self, image: str) -> bool:
        return image_allowed(image, self.allowed_images)

    def limits_for(self, resources: dict[str, Any] | None) -> Limits:
        """min(request, TRE maximum) for each resource; the maximum when nothing was asked."""
        resources = resources or {}
        cpu = min(float(resources.get("cpu_cores") or self.max_cpu_cores), self.max_cpu_cores)
        ram = min(float(resources.get("ram_gb") or self.max_ram_gb), self.max_ram_gb)
        disk = min(float(resources.get("disk_gb") or self.max_disk_gb), self.max_disk_gb)
        return Limits(
            cpu_cores=max(cpu, 0.1),
            memory_bytes=max(int(ram * GIB), 16 << 20),
            disk_bytes=max(int(disk * GIB), 16 << 20),
            runtime_s=self.max_runtime_s,
            pids=self.max_pids,
        )

    def datasets_for(self, project: str) -> dict[str, Dataset]:
        return {name: self.datasets[name] for name in self.grants.get(project, [])}
