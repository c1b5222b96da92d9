"""The agent's side of the automated disclosure checks: run every rule on every held file, and keep
what they found. If the rules cannot be run at all, every file needs a person: nothing passes unseen."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from fivesafes_tes.egress.checks.base import Verdict
from fivesafes_tes.egress.checks.config import ChecksConfig
from fivesafes_tes.egress.held import HeldFile, HeldKey

log = logging.getLogger(__name__)


def run(
    files: list[HeldFile], config: ChecksConfig, project: str
) -> dict[HeldKey, tuple[str, list[dict[str, Any]]]]:
    """Each file's key -> (worst verdict, each rule's result as data). Every file has its local copy."""
    try:
        from fivesafes_tes.egress.checks.runner import run_checks

        reports = run_checks(files, config, project)
    except Exception as exc:  # noqa: BLE001  no rule may be skipped silently: fail safe to human review
        log.error(
            "automated checks could not run (%s); every file goes to an output checker", type(exc).__name__
        )
        note = {
            "rule": "runner",
            "version": "0",
            "verdict": Verdict.FAIL.value,
            "error": type(exc).__name__,
            "findings": [
                {
                    "verdict": "fail",
                    "message": "the automated checks could not run on this file; "
                    "an output checker must examine it in full",
                }
            ],
        }
        return {file.key: (Verdict.FAIL.value, [note]) for file in files}
    return {
        report.file.key: (report.verdict.value, [_as_data(r) for r in report.results]) for report in reports
    }


def _as_data(result: Any) -> dict[str, Any]:
    data = asdict(result)
    data["verdict"] = str(result.verdict)
    for finding in data.get("findings", []):
        finding["verdict"] = str(finding["verdict"])
    return data
