"""The three TES views as pure functions over a full task document."""

from __future__ import annotations

from typing import Any

from fivesafes_tes.tes.models import View


def render(task: dict[str, Any], view: View) -> dict[str, Any]:
    """Cut a FULL task document (a dict of spec fields) down to what `view` shows.

    MINIMAL: id and state only. BASIC: everything but executor stdout/stderr, input
    `content` and `system_logs`. FULL: everything.
    """
    if view is View.MINIMAL:
        return {"id": task["id"], "state": task["state"]}
    if view is View.FULL:
        return task
    basic = {k: v for k, v in task.items() if k not in ("inputs", "logs")}
    if "inputs" in task:
        basic["inputs"] = [{k: v for k, v in i.items() if k != "content"} for i in task["inputs"]]
    if "logs" in task:
        basic["logs"] = [_basic_log(log) for log in task["logs"]]
    return basic


def _basic_log(log: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in log.items() if k not in ("system_logs", "logs")}
    out["logs"] = [{k: v for k, v in e.items() if k not in ("stdout", "stderr")} for e in log.get("logs", [])]
    return out
