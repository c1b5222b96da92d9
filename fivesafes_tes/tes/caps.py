"""How much one task may ask for: caps on the lists and maps of a TES task document.

The gateway applies its caps when a task is submitted, and each TRE applies its own (which can only
make them tighter, since the gateway refuses first) before it stages anything. Without them one
request could ask for thousands of containers, mounts or variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TaskCaps:
    """Most items one task may have of each kind; `env_vars` counts per executor."""

    executors: int = 20
    inputs: int = 100
    outputs: int = 100
    volumes: int = 20
    env_vars: int = 100
    tags: int = 50

    def refusal(self, task: Mapping[str, Any], who: str) -> str | None:
        """Why `task` (a task document, or a mapping of its lists) is over a cap, naming the field and
        `who` sets the limit; None when it is within every cap."""
        executors = task.get("executors") or []
        for name, cap in (
            ("executors", self.executors),
            ("inputs", self.inputs),
            ("outputs", self.outputs),
            ("volumes", self.volumes),
            ("tags", self.tags),
        ):
            given = len(task.get(name) or ())
            if given > cap:
                return f"{name}: {given} given, {who} accepts at most {cap}"
        for n, executor in enumerate(executors):
            given = len(executor.get("env") or ())
            if given > self.env_vars:
                return (
                    f"executors.{n}.env: {given} variables given, {who} accepts at most {self.env_vars} "
                    "per executor"
                )
        return None


DEFAULT_CAPS = TaskCaps()
