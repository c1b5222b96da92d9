"""What a TRE will run, as it tells the gateway: the part of its policy that depends on the request
alone (images, where inputs may come from, reserved container paths and variables, per-task caps, the
workflow languages it runs).

A TRE's agent builds this document from the policy it enforces (`agent.staging.admission`), checks
every task it leases against it before staging anything, and publishes the same document to the
gateway, which checks each task against its target TREs' documents when it is submitted. One function
(`Admission.refusal`) decides in both places, so the gateway refuses with the words the TRE would use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field

from fivesafes_tes.tes.caps import TaskCaps
from fivesafes_tes.tes.models import NulFree
from fivesafes_tes.tes.outputs import normal_path, output_folder

_MANY = 10_000
# The workflow runner's entry point (`workflow_runner.py`, in the runner image): an executor running
# `fivesafes-workflow <language> ...` runs a whole workflow in that language.
RUNNER_COMMAND = "fivesafes-workflow"
# `tes`: a TES task as given, what every TRE runs; the others run whole inside the TRE by a runner image.
WORKFLOW_LANGUAGES = ("tes", "cwl", "snakemake")


def runner_language(command: Sequence[str]) -> str | None:
    """The workflow language an executor's command runs through the workflow runner; None when the
    command is not the runner's."""
    if len(command) > 1 and PurePosixPath(str(command[0])).name == RUNNER_COMMAND:
        return str(command[1])
    return None


def language_name(language: str) -> str:
    """A workflow language as people write it."""
    return {"tes": "TES", "cwl": "CWL", "snakemake": "Snakemake"}.get(language, language or "unnamed")


def _listing(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def image_allowed(image: str, patterns: list[str] | tuple[str, ...]) -> bool:
    """Whether `image` (a digest pin is part of the name) matches one of the fnmatch `patterns`."""
    return any(fnmatchcase(image, pattern) for pattern in patterns)


class ReservedPath(NulFree):
    """A container path a task may not mount anything at; with `below`, nor anywhere under it. The
    sandbox's own paths and a TRE's dataset mount points are these, and a TRE publishes them so."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    path: str = Field(min_length=1, max_length=4096)
    below: bool
    why: str = Field(max_length=1000)

    def covers(self, target: str) -> bool:
        # POSIX keeps a leading "//" apart; the engine does not.
        p, mine = PurePosixPath("/" + target.lstrip("/")), PurePosixPath(self.path)
        return p == mine or (self.below and mine in p.parents)


class PublishedCaps(NulFree):
    """The TRE's per-task caps. No tag cap: tags stay at the gateway, a TRE never receives them."""

    model_config = ConfigDict(strict=True, extra="forbid")

    executors: int = Field(ge=0)
    inputs: int = Field(ge=0)
    outputs: int = Field(ge=0)
    volumes: int = Field(ge=0)
    env_vars: int = Field(ge=0, description="Per executor.")


class Admission(NulFree):
    """One TRE's admission policy, as its agent publishes it (`PUT /agent/v1/policy`)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    tre: str = Field(min_length=1, max_length=63)
    allowed_images: list[str] = Field(max_length=_MANY, description="fnmatch patterns; empty allows none.")
    input_url_schemes: list[str] = Field(
        max_length=100,
        description=(
            "Schemes of the input urls the TRE fetches (`s3`, ...); literal `content` is always staged."
        ),
    )
    reserved_paths: list[ReservedPath] = Field(
        max_length=_MANY,
        description="Container paths where no input, output folder or volume of any project may be.",
    )
    project_reserved_paths: dict[str, list[ReservedPath]] = Field(
        default_factory=dict,
        max_length=_MANY,
        description=(
            "More such paths for the named projects' tasks (where their granted datasets are mounted)."
        ),
    )
    reserved_env_prefixes: list[str] = Field(
        max_length=100, description="Environment variable names starting with one of these are refused."
    )
    caps: PublishedCaps
    # Defaults for a TRE whose agent publishes no languages: it checks none, so none is refused for it.
    workflow_languages: list[str] = Field(
        default_factory=lambda: list(WORKFLOW_LANGUAGES),
        max_length=100,
        description=(
            "Languages of the workflows it runs: `tes` (a TES task, always) and those its runner images "
            "run whole inside the TRE (`cwl`, `snakemake`)."
        ),
    )
    workflow_runners: dict[str, str] = Field(
        default_factory=dict,
        max_length=100,
        description="The runner image it offers for each workflow language but `tes`.",
    )

    def refusal(self, task: Mapping[str, Any], project: str) -> str | None:
        """Why this TRE will not run `task` (a task document as the TRE receives it: no tags) for
        `project`, naming the field and what to change; None when nothing here refuses it."""
        return (
            self._caps().refusal(task, self.tre)
            or self._workflow_refusal(task)
            or self._executors_refusal(task)
            or self._inputs_refusal(task)
            or self._paths_refusal(task, project)
        )

    def language_refusal(self, language: str) -> str | None:
        """Why this TRE will not run a workflow in `language` (`tes`, `cwl`, ...); None when it runs it."""
        if language in self.workflow_languages:
            return None
        runs = [language_name(name) for name in self.workflow_languages]
        return (
            f"{self.tre} does not run {language_name(language)} workflows; it runs "
            f"{_listing(runs) if runs else 'none'} (its TRE admin sets workflow_languages)"
        )

    def _caps(self) -> TaskCaps:
        return TaskCaps(**self.caps.model_dump())

    def _workflow_refusal(self, task: Mapping[str, Any]) -> str | None:
        # Read from the task itself: tags, where a workflow task names its engine, never reach a TRE.
        for n, executor in enumerate(task.get("executors") or []):
            language = runner_language(executor.get("command") or [])
            why = None if language is None else self.language_refusal(language)
            if why:
                return f"executors.{n}.command: {why}"
        return None

    def _executors_refusal(self, task: Mapping[str, Any]) -> str | None:
        for n, executor in enumerate(task.get("executors") or []):
            image = executor.get("image", "")
            if not image_allowed(image, self.allowed_images):
                allowed = (
                    f"it runs images matching {', '.join(self.allowed_images)}"
                    if self.allowed_images
                    else "it allows no image yet (its TRE admin sets which)"
                )
                return f"executors.{n}.image: {self.tre} does not allow image {image!r}; {allowed}"
            for key in executor.get("env") or {}:
                if key.upper().startswith(tuple(self.reserved_env_prefixes)):
                    return (
                        f"executors.{n}.env: {key!r} is reserved by {self.tre} (names starting "
                        f"{', '.join(self.reserved_env_prefixes)}); rename it"
                    )
        return None

    def _inputs_refusal(self, task: Mapping[str, Any]) -> str | None:
        for n, item in enumerate(task.get("inputs") or []):
            if item.get("content") is not None:
                continue
            url = str(item.get("url") or "")
            scheme = urlsplit(url).scheme.lower() if "://" in url else ""
            if scheme in self.input_url_schemes:
                continue
            if self.input_url_schemes:
                accepted = ", ".join(f"{s}://" for s in self.input_url_schemes)
                return (
                    f"inputs.{n}.url: {self.tre} accepts {accepted} inputs only, not {url!r}; "
                    "or give the file's text as the input's content"
                )
            return (
                f"inputs.{n}.url: {self.tre} stages only literal content and the datasets it grants the "
                f"project, and fetches no url ({url!r}); give the file's text as the input's content"
            )
        return None

    def _paths_refusal(self, task: Mapping[str, Any], project: str) -> str | None:
        reserved = [*self.reserved_paths, *self.project_reserved_paths.get(project, [])]
        places = [(f"inputs.{n}.path", i.get("path")) for n, i in enumerate(task.get("inputs") or [])]
        for n, output in enumerate(task.get("outputs") or []):
            path = str(output.get("path") or "")
            field, folder = output_folder(output) if normal_path(path) is not None else ("path", path)
            if field == "path" and folder != path and normal_path(folder) is None:
                return (
                    f"outputs.{n}.path: {path!r} is directly under /; put outputs in a folder, "
                    "such as /outputs"
                )
            places.append((f"outputs.{n}.{field}", folder))
        places += [(f"volumes.{n}", v) for n, v in enumerate(task.get("volumes") or [])]
        for field, path in places:
            path = str(path or "")
            normal = normal_path(path)
            if normal is None:
                return f"{field}: {path!r} must be an absolute path below / without '..'"
            hit = next((r for r in reserved if r.covers(normal)), None)
            if hit is not None:
                return (
                    f"{field}: {path!r} is reserved by {self.tre}: {hit.why} ({hit.path}); "
                    "use another folder, such as /outputs"
                )
        return None


def shared_runner(admissions: Iterable[Admission], language: str, default: str) -> str:
    """The runner image for `language` that every one of these TREs offers (`default` when none has
    published one); ValueError naming each TRE's image when they differ, since one task runs one image
    in every TRE it goes to."""
    offered = {a.tre: a.workflow_runners[language] for a in admissions if language in a.workflow_runners}
    images = sorted(set(offered.values()))
    if len(images) > 1:
        each = "; ".join(f"{tre} runs it with {image}" for tre, image in sorted(offered.items()))
        raise ValueError(
            f"the target TREs offer different runner images for {language_name(language)} ({each}); send the "
            "workflow to TREs that share one"
        )
    return images[0] if images else default
