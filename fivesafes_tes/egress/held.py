"""One held file, from the container to the researcher: what it is (its key), and what is known of it.

A task leaves two sorts of file behind: the outputs its TES request names, each known by its absolute
container path, and the captured stdout and stderr of each executor step. `HeldKey` says which, in
types; `name_of` is the one place a key becomes the name people and the wire see (`/out/table.csv`,
`step-0.stdout`), and `parse` the one way back. Staging, the airlock, the rules, review, the upload
to the gateway and the researcher view all pass the same `HeldFile`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from fivesafes_tes.tes.outputs import normal_path

Kind = Literal["output", "stdout", "stderr"]
KINDS: tuple[Kind, ...] = ("output", "stdout", "stderr")


class Stream(StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"


class InvalidHeldName(ValueError):
    """A name that is neither an output's absolute container path nor `step-N.stdout|stderr`."""


@dataclass(frozen=True, order=True)
class LogKey:
    """The captured stdout or stderr of executor step `step` (0, 1, ...)."""

    step: int
    stream: Stream


@dataclass(frozen=True, order=True)
class OutputKey:
    """An output file, by its absolute, normalised container path."""

    path: str


HeldKey = LogKey | OutputKey

_LOG_NAME = re.compile(r"step-(0|[1-9][0-9]{0,8})\.(stdout|stderr)")


def name_of(key: HeldKey) -> str:
    """The file's name everywhere outside the type: an output's container path, a log's `step-N.stream`."""
    if isinstance(key, LogKey):
        return f"step-{key.step}.{key.stream.value}"
    return key.path


def parse(name: str) -> HeldKey:
    """The key `name_of` made `name` from; `InvalidHeldName` for anything it cannot have made."""
    match = _LOG_NAME.fullmatch(name)
    if match:
        return LogKey(step=int(match[1]), stream=Stream(match[2]))
    if normal_path(name) != name:
        raise InvalidHeldName(
            f"{name[:80]!r} is neither an absolute, normalised container path nor step-N.stdout|stderr"
        )
    return OutputKey(name)


def kind_of(key: HeldKey) -> Kind:
    """The kind column of the tables and the wire: `output`, `stdout` or `stderr`."""
    if isinstance(key, OutputKey):
        return "output"
    return "stdout" if key.stream is Stream.STDOUT else "stderr"


def step_of(key: HeldKey) -> int | None:
    return key.step if isinstance(key, LogKey) else None


def from_parts(name: str, kind: str, step: int | None) -> HeldKey:
    """The key of a file described as (name, kind, step) on the wire or in a table row; the three
    must agree, or `InvalidHeldName` says how they should read."""
    key = parse(name)
    if (kind, step) != (kind_of(key), step_of(key)):
        raise InvalidHeldName(
            f"{name[:80]!r} does not fit kind {kind!r} and step {step!r}: an output is named by its absolute "
            "container path with no step; a log is named step-N.stdout or step-N.stderr after its step N"
        )
    return key


@dataclass(frozen=True)
class HeldFile:
    """A held file: its key, size and SHA-256, and where a local copy is (None where there is none,
    as at the gateway before the bytes arrive). Two are equal when key, size and SHA-256 are: the
    same file, wherever its copy is."""

    key: HeldKey
    size: int
    sha256: str
    local: Path | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return name_of(self.key)

    @property
    def kind(self) -> Kind:
        return kind_of(self.key)

    @property
    def step(self) -> int | None:
        return step_of(self.key)

    @property
    def path(self) -> Path:
        """The local copy, for code that reads the bytes (the rules, the upload)."""
        if self.local is None:
            raise LookupError(f"{self.name} has no local copy here")
        return self.local

    def described(self) -> dict[str, Any]:
        """The file as the agent API and the tables describe it: name, kind, step, size, SHA-256."""
        return {
            "name": self.name,
            "kind": self.kind,
            "step": self.step,
            "size": self.size,
            "sha256": self.sha256,
        }

    @classmethod
    def from_description(cls, name: str, kind: str, step: int | None, size: int, sha256: str) -> HeldFile:
        """The inverse of `described`; `InvalidHeldName` if name, kind and step do not agree."""
        return cls(from_parts(name, kind, step), size, sha256)
