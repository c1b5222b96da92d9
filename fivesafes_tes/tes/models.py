"""GA4GH TES 1.1 documents as pydantic models, field for field as the OpenAPI spec names them.

Requests are validated strictly (no "5" for an integer, no 1 for a boolean) so that invalid
input is refused rather than guessed at; responses are built from the same models and dumped
without unset fields, so only spec fields ever leave the gateway.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

INT32_MAX = 2**31 - 1
_WILDCARD = re.compile(r"[*?\[]")
# What the schema says of every string a request may carry (the gateway's OpenAPI document adds it).
NUL_FREE = r"^[^\u0000]*$"


class State(StrEnum):
    UNKNOWN = "UNKNOWN"
    QUEUED = "QUEUED"
    INITIALIZING = "INITIALIZING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETE = "COMPLETE"
    EXECUTOR_ERROR = "EXECUTOR_ERROR"
    SYSTEM_ERROR = "SYSTEM_ERROR"
    CANCELED = "CANCELED"
    PREEMPTED = "PREEMPTED"
    CANCELING = "CANCELING"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset(
    {State.COMPLETE, State.EXECUTOR_ERROR, State.SYSTEM_ERROR, State.CANCELED, State.PREEMPTED}
)


class FileType(StrEnum):
    FILE = "FILE"
    DIRECTORY = "DIRECTORY"


class View(StrEnum):
    MINIMAL = "MINIMAL"
    BASIC = "BASIC"
    FULL = "FULL"


def _nul_at(value: Any, where: str = "") -> str | None:
    """Where in `value` (a JSON value) a NUL character is, as a dotted path; None if nowhere."""
    if isinstance(value, str):
        return where if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                return f"{where}.{key!r}".lstrip(".")
            found = _nul_at(item, f"{where}.{key}".lstrip("."))
            if found is not None:
                return found
    elif isinstance(value, list):
        for n, item in enumerate(value):
            found = _nul_at(item, f"{where}.{n}".lstrip("."))
            if found is not None:
                return found
    return None


class NulFree(BaseModel):
    """A request body none of whose strings holds a NUL character: PostgreSQL cannot store one in text,
    and no name, path or value needs one, so it is refused wherever it appears."""

    # After validation, so keys the model ignores (and never stores) are not looked at, and a nested
    # model's fields are checked by the model itself, where the error names them.
    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        where = _nul_at(value)
        if where is not None:
            inside = f" (at {where})" if where else ""
            raise ValueError(f"a NUL character (\\u0000){inside} is not accepted; remove it")
        return value


class _Model(NulFree):
    model_config = ConfigDict(strict=True, extra="ignore", use_enum_values=False)


def _absolute(value: str | None, what: str) -> str | None:
    if value is not None and not value.startswith("/"):
        raise ValueError(
            f"{what} must be an absolute path inside the container (start with '/'), got {value!r}"
        )
    return value


def _whole_number(value: object) -> object:
    """JSON has one number type: 135.0 is as much an integer as 135 (strings and booleans stay refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# The validator wraps the constrained type (rather than sitting beside Field) so the schema keeps
# minimum/maximum.
Int32 = Annotated[Annotated[int, Field(ge=0, le=INT32_MAX)], BeforeValidator(_whole_number)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
# The schema says what the validators check, so clients (and fuzzers) can know before they send.
AbsolutePath = Annotated[str, Field(json_schema_extra={"pattern": "^/[^\\u0000]*$"})]


class Input(_Model):
    name: str | None = None
    description: str | None = None
    url: str | None = None
    path: str
    type: FileType = Field(default=FileType.FILE, strict=False)
    content: str | None = None
    streamable: bool | None = None


class InputRequest(Input):
    """An input as submitted: an absolute path, and a url or literal content."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["url"], "properties": {"url": {"type": "string", "minLength": 1}}},
                {"required": ["content"], "properties": {"content": {"type": "string", "minLength": 1}}},
            ]
        }
    )

    path: AbsolutePath

    @field_validator("path")
    @classmethod
    def _path_absolute(cls, v: str) -> str:
        return _absolute(v, "path")  # type: ignore[return-value]

    @model_validator(mode="after")
    def _url_or_content(self) -> InputRequest:
        if not self.content and not self.url:
            raise ValueError("an input needs a 'url' (or a literal 'content')")
        return self


class Output(_Model):
    name: str | None = None
    description: str | None = None
    url: str
    path: str
    path_prefix: str | None = None
    type: FileType = Field(default=FileType.FILE, strict=False)


class OutputRequest(Output):
    """An output as submitted: an absolute path; with wildcards, the prefix to strip."""

    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"path": {"type": "string", "pattern": r"[*?\[]"}}, "required": ["path"]},
            "then": {
                "required": ["path_prefix"],
                "properties": {"path_prefix": {"type": "string", "minLength": 1}},
            },
        }
    )

    path: AbsolutePath

    @field_validator("path")
    @classmethod
    def _path_absolute(cls, v: str) -> str:
        return _absolute(v, "path")  # type: ignore[return-value]

    @model_validator(mode="after")
    def _prefix_for_wildcards(self) -> OutputRequest:
        if _WILDCARD.search(self.path) and not self.path_prefix:
            raise ValueError("an output whose path has wildcards needs 'path_prefix' (the part to strip)")
        return self


class Resources(_Model):
    cpu_cores: Int32 | None = None
    preemptible: bool | None = None
    ram_gb: NonNegativeFloat | None = None
    disk_gb: NonNegativeFloat | None = None
    zones: list[str] | None = None
    backend_parameters: dict[str, str] | None = None
    backend_parameters_strict: bool | None = None

    @field_validator("ram_gb", "disk_gb")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number of gigabytes")
        return v


class Executor(_Model):
    image: Annotated[str, Field(min_length=1)]
    command: Annotated[list[str], Field(min_length=1)]
    workdir: str | None = None
    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    env: dict[str, str] | None = None
    ignore_error: bool | None = None


class ExecutorRequest(Executor):
    workdir: AbsolutePath | None = None
    stdin: AbsolutePath | None = None
    stdout: AbsolutePath | None = None
    stderr: AbsolutePath | None = None

    @field_validator("workdir", "stdin", "stdout", "stderr")
    @classmethod
    def _paths_absolute(cls, v: str | None) -> str | None:
        return _absolute(v, "this path")


class ExecutorLog(_Model):
    start_time: str | None = None
    end_time: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    exit_code: int


class OutputFileLog(_Model):
    url: str
    path: str
    size_bytes: str


class TaskLog(_Model):
    logs: list[ExecutorLog] = Field(default_factory=list)
    metadata: dict[str, str] | None = None
    start_time: str | None = None
    end_time: str | None = None
    outputs: list[OutputFileLog] = Field(default_factory=list)
    system_logs: list[str] | None = None


TagKey = Annotated[str, Field(max_length=255)]
TagValue = Annotated[str, Field(max_length=1024)]
Name = Annotated[str, Field(max_length=1024)]


class TaskRequest(_Model):
    """The body of CreateTask: a tesTask without its read-only fields (id, state, logs, creation_time).

    Name and tag lengths are this server's own maxima, published in its OpenAPI document.
    """

    name: Name | None = None
    description: str | None = None
    inputs: list[InputRequest] | None = None
    outputs: list[OutputRequest] | None = None
    resources: Resources | None = None
    executors: Annotated[list[ExecutorRequest], Field(min_length=1)]
    volumes: list[AbsolutePath] | None = None
    tags: dict[TagKey, TagValue | None] | None = None

    @field_validator("volumes")
    @classmethod
    def _volumes_absolute(cls, v: list[str] | None) -> list[str] | None:
        for volume in v or []:
            _absolute(volume, "a volume")
        return v


class Task(_Model):
    """A task as the gateway returns it (in MINIMAL view, only `id` and `state`)."""

    id: str | None = None
    state: State | None = Field(default=None, strict=False)
    name: str | None = None
    description: str | None = None
    inputs: list[Input] | None = None
    outputs: list[Output] | None = None
    resources: Resources | None = None
    executors: list[Executor] | None = None
    volumes: list[str] | None = None
    tags: dict[str, str] | None = None  # null values come back as ""
    logs: list[TaskLog] | None = None
    creation_time: str | None = None


class CreateTaskResponse(_Model):
    id: str


class CancelTaskResponse(_Model):
    pass


class ListTasksResponse(_Model):
    tasks: list[Task]
    next_page_token: str | None = None


class Organization(_Model):
    name: str
    url: str


class ServiceType(_Model):
    group: str = "org.ga4gh"
    artifact: str = "tes"
    version: str = "1.1.0"


class ServiceInfo(_Model):
    id: str
    name: str
    type: ServiceType
    description: str | None = None
    organization: Organization
    contactUrl: str | None = None
    documentationUrl: str | None = None
    createdAt: str | None = None
    updatedAt: str | None = None
    environment: str | None = None
    version: str
    storage: list[str] = Field(default_factory=list)
    tesResources_backend_parameters: list[str] = Field(default_factory=list)
