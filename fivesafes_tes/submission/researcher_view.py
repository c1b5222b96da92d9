"""What a researcher sees of a child (one task in one TRE): the one place it is built.

Every field a researcher can read is an exit from the TRE. Before release a child's view is a function
only of the request, the stage, TRE-written messages from a fixed vocabulary and what reviewers wrote;
never of what the task did (exit codes, step times, log tails, output names, sizes or counts, check
verdicts, finding text). Exit codes, step times and released logs show once the child ended with
something released: the output checker saw them when approving. Every route (the TES views and list,
`/api/v1` results, the CLI through those) renders children through this module, and the gateway
filters what an agent sends through it too, so an agent that says more than it should is not
believed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fivesafes_tes.egress.held import LogKey, Stream
from fivesafes_tes.submission.stages import Stage
from fivesafes_tes.submission.tables import Child, ReleasedFile, Task

# A child's files, exit codes and step times are the researcher's only once it has ended with a
# release; before that the TRE's agent may still be sending the files, or may stop (a changed file
# blocks the whole release). `executor_failed` is reached only with something approved.
VISIBLE_AFTER = (Stage.RELEASED.value, Stage.PARTIALLY_RELEASED.value, Stage.EXECUTOR_FAILED.value)

# Ended after review: the disclosure summary is shown (for `withheld`, only the reviewers' reasons).
_REVIEWED = (*VISIBLE_AFTER, Stage.WITHHELD.value)

# Stages whose messages are functions of the request and of the TRE admins' decisions (approval waits
# and refusals, staging refusals). Once the task has run, what an agent would say could depend on what
# the task did, so from `running` on the gateway renders its own fixed lines and keeps no agent text.
_PRE_RUN = frozenset(
    {Stage.RECEIVED, Stage.LEASED, Stage.AWAITING_TRE_APPROVAL, Stage.STAGING, Stage.REJECTED_BY_TRE}
)

_STAGE_LINES = {
    Stage.RUNNING: "{tre}: the task is running",
    Stage.CHECKING: "{tre}: the run has ended; the automated disclosure checks are running",
    Stage.AWAITING_REVIEW: "{tre}: outputs are held in the TRE's airlock for review by its output checkers",
    Stage.RELEASED: "{tre}: the output checkers released the outputs",
    Stage.PARTIALLY_RELEASED: "{tre}: the output checkers released some outputs and withheld the others",
    Stage.EXECUTOR_FAILED: (
        "{tre}: a step of the task failed; the output checkers released what they approved"
    ),
    Stage.WITHHELD: "{tre}: the output checkers withheld every output",
    Stage.SYSTEM_FAILED: "{tre}: the TRE could not complete the task",
}

# Notices an agent may raise on a run-derived stage (in its report's `notice`), each a fixed line.
NOTICES = {
    "release_blocked": "{tre}: release blocked: a held file changed in the TRE's airlock after it was "
    "checked; the TRE's admins have been alerted",
}

PROFILE = "fivesafes-tes/disclosure-export/1"


def kept_message(stage: Stage, message: str | None) -> str | None:
    """The agent's message as the gateway stores it: only on stages before the run, else dropped."""
    return message if stage in _PRE_RUN else None


def task_log(
    task: Task, child: Child, tre: str, released: list[ReleasedFile], results_url: str
) -> dict[str, Any]:
    """One TES TaskLog per TRE (the FULL view's; BASIC and MINIMAL cut it down)."""
    visible = child.stage in VISIBLE_AFTER
    files = released if visible else []
    log: dict[str, Any] = {
        "logs": _executor_logs(child, files) if visible else [],
        "outputs": [
            {
                "url": f.delivered_url or f"{results_url}/{f.id}",
                "path": f.name,
                "size_bytes": str(f.size),
            }
            for f in files
            if f.kind == "output"
        ],
        "metadata": {"tre": tre, "stage": child.stage, "attempt": str(child.attempt)},
        "system_logs": [*task.system_logs, *_system_logs(child, tre)],
    }
    if child.started_at:  # the gateway's clock when staging began: before the task could act
        log["start_time"] = rfc3339(child.started_at)
    if child.ended_at:  # when the last stage arrived, at the TRE's reporting granularity
        log["end_time"] = rfc3339(child.ended_at)
    return log


def _system_logs(child: Child, tre: str) -> list[str]:
    """What the TRE said before the run, what the gateway itself recorded, then the stage's fixed line."""
    lines = list(child.system_logs)
    stage = Stage(child.stage)
    if stage in _STAGE_LINES:
        line = _STAGE_LINES[stage].format(tre=tre)
        reasons = disclosure(child, tre, [])["withheld_reasons"] if child.stage in _REVIEWED else []
        lines.append(f"{line}; their reasons: {'; '.join(reasons)}" if reasons else line)
    notice = child.report.get("notice")
    if stage is Stage.AWAITING_REVIEW and isinstance(notice, str) and notice in NOTICES:
        lines.append(NOTICES[notice].format(tre=tre))
    return lines


def _executor_logs(child: Child, released: list[ReleasedFile]) -> list[dict[str, Any]]:
    """Exit codes and step times the checker saw, with the tails of the logs the checker released."""
    shown = {f.held.key for f in released}
    tails = child.report.get("released_logs") or {}
    entries = []
    for n, step in enumerate(child.report.get("steps") or []):
        if not isinstance(step, dict) or not isinstance(step.get("exit_code"), int):
            continue
        entry = {
            k: step[k] for k in ("exit_code", "start_time", "end_time") if isinstance(step.get(k), (int, str))
        }
        for stream in Stream:
            text = tails.get(f"{n}.{stream}")
            if LogKey(n, stream) in shown and isinstance(text, str):
                entry[stream.value] = text
        entries.append(entry)
    return entries


def results_entry(child: Child, tre: str, released: list[ReleasedFile], results_url: str) -> dict[str, Any]:
    """The per-TRE entry of `/api/v1/tasks/{id}/results`: released files and the disclosure summary."""
    files = released if child.stage in VISIBLE_AFTER else []
    return {
        "tre": tre,
        "stage": child.stage,
        "files": [{"id": f.id, **f.held.described(), "url": f"{results_url}/{f.id}"} for f in files],
        "disclosure": disclosure(child, tre, files) if child.stage in _REVIEWED else None,
    }


def disclosure(child: Child, tre: str, released: list[ReleasedFile]) -> dict[str, Any]:
    """The researcher's part of the disclosure record: the review policy, each released file with its
    rules' verdicts and the decisions on it, and the distinct reasons given for withholding the rest.
    Nothing of an unreleased file: not its name, size, findings or whether it existed. The TRE keeps
    the full record (every held file, every finding) for its output checkers."""
    record = child.report.get("disclosure")
    record = record if isinstance(record, dict) else {}
    by_name = {(f.name, f.sha256): f for f in released}
    files = []
    for entry in record.get("files") or []:
        if not isinstance(entry, dict) or entry.get("decision") != "approved":
            continue
        file = by_name.get((entry.get("name"), entry.get("sha256")))  # type: ignore[arg-type]
        if file is not None:
            files.append(_released_entry(entry, file))
    policy = record.get("policy")
    return {
        "profile": PROFILE,
        "tre": tre,
        "outcome": child.stage,
        "policy": {k: v for k, v in policy.items() if isinstance(v, (bool, int, float, str))}
        if isinstance(policy, dict)
        else {},
        "files": files,
        "withheld_reasons": sorted(
            {r for r in record.get("withheld_reasons") or [] if isinstance(r, str) and r.strip()}
        ),
    }


def _released_entry(entry: dict[str, Any], file: ReleasedFile) -> dict[str, Any]:
    checks = entry.get("checks")
    if not isinstance(checks, dict):
        checks = {}
    return {
        "name": file.name,
        "kind": file.kind,
        "size": file.size,
        "sha256": file.sha256,
        "checks": {
            "verdict": _text(checks.get("verdict")),
            "rules": [
                {
                    "rule": _text(r.get("rule")),
                    "version": _text(r.get("version")),
                    "verdict": _text(r.get("verdict")),
                }
                for r in checks.get("rules") or []
                if isinstance(r, dict)
            ],
        },
        "decision": "approved",
        "decisions": [
            {
                "checker": _text(d.get("checker")),
                "decision": _text(d.get("decision")),
                "reason": _text(d.get("reason")),
                "at": _text(d.get("at")),
            }
            for d in entry.get("decisions") or []
            if isinstance(d, dict)
        ],
    }


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:  # SQLite hands back naive datetimes; we only ever store UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
