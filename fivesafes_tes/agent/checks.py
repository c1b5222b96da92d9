"""The agent's side of the automated disclosure checks: run every rule on every held file, and keep
what they found. If the rules cannot be run at all, every file needs a person: nothing passes unseen."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fivesafes_tes.egress.airlock import Manifest
from fivesafes_tes.egress.checks.base import HeldFile, Verdict
from fivesafes_tes.egress.checks.config import ChecksConfig

log = logging.getLogger(__name__)


def run(
    manifest: Manifest,
    local_paths: dict[tuple[str, str | None, int | None], Path],
    config: ChecksConfig,
    project: str,
) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """held key -> (worst verdict, each rule's result as data)."""
    files = {
        held.key: HeldFile(
            path=local_paths[(held.kind, held.container_path, held.step)],
            name=held.container_path or f"step-{held.step}.{held.kind}",
            kind=held.kind,
            size=held.size,
            sha256=held.sha256,
        )
        for held in manifest.files
    }
    try:
        from fivesafes_tes.egress.checks.runner import run_checks

        reports = run_checks(list(files.values()), config, project)
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
        return {key: (Verdict.FAIL.value, [note]) for key in files}
    by_name = {report.file.name: report for report in reports}
    return {
        key: (by_name[file.name].verdict.value, [_as_data(r) for r in by_name[file.name].results])
        for key, file in files.items()
    }


def _as_data(result: Any) -> dict[str, Any]:
    data = asdict(result)
    data["verdict"] = str(result.verdict)
    for finding in data.get("findings", []):
        finding["verdict"] = str(finding["verdict"])
    return data
