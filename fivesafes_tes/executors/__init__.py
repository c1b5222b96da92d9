"""Executor backends behind one interface, and the registry the agent picks one from by name.

Backends are imported on first use, so a TRE running one engine does not need another's SDK.
Adding a backend is one module and one line in BACKENDS.
"""

from __future__ import annotations

import importlib

from .base import (
    LABEL_ATTEMPT,
    LABEL_CHILD,
    LABEL_DEADLINE,
    LABEL_DEPLOYMENT,
    LABEL_STEP,
    LABEL_TRE,
    BackendContext,
    Collected,
    DatasetMount,
    Executor,
    ExecutorError,
    InputFile,
    Limits,
    Outcome,
    RequestRefused,
    RunResult,
    RunSpec,
    Step,
    StepResult,
)

BACKENDS: dict[str, str] = {
    "docker": "fivesafes_tes.executors.docker:DockerExecutor",
    "kubernetes": "fivesafes_tes.executors.kubernetes:KubernetesExecutor",
    "local": "fivesafes_tes.executors.local:LocalExecutor",
    "tes": "fivesafes_tes.executors.tes:TesRelayExecutor",
}


def backend(name: str) -> type[Executor]:
    """The class of the backend called `name`."""
    try:
        module, _, class_name = BACKENDS[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(sorted(BACKENDS))}") from None
    found: type[Executor] = getattr(importlib.import_module(module), class_name)
    return found


def create(name: str, context: BackendContext) -> Executor:
    """A ready backend configured for the agent that `context` describes; ValueError, naming the
    setting, when that configuration cannot work (e.g. a dataset with no source this backend reads)."""
    made: Executor = backend(name).from_context(context)  # type: ignore[attr-defined]
    return made


__all__ = [
    "BACKENDS",
    "LABEL_ATTEMPT",
    "LABEL_CHILD",
    "LABEL_DEADLINE",
    "LABEL_DEPLOYMENT",
    "LABEL_STEP",
    "LABEL_TRE",
    "BackendContext",
    "Collected",
    "DatasetMount",
    "Executor",
    "ExecutorError",
    "InputFile",
    "Limits",
    "Outcome",
    "RequestRefused",
    "RunResult",
    "RunSpec",
    "Step",
    "StepResult",
    "backend",
    "create",
]
