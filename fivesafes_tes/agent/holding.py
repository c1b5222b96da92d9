"""Hold a finished run's outputs in the airlock: collect them, hold them with their SHA-256, run the
automated rules, and record each held file with its verdict for the output checkers.

Also the run record the agent keeps in `LocalChild.result` (what was mounted, how the run ended), which
the hold reads back after a restart, and emptying the airlock once a child has ended.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fivesafes_tes.agent import checks, staging
from fivesafes_tes.agent.tables import HeldFileRecord, LocalChild
from fivesafes_tes.db import Database
from fivesafes_tes.egress import airlock
from fivesafes_tes.egress.checks.config import ChecksConfig
from fivesafes_tes.egress.store import ObjectStore, StoreUnavailable
from fivesafes_tes.executors import RunResult, RunSpec

log = logging.getLogger(__name__)


def hold(db: Database, store: ObjectStore, checks_config: ChecksConfig, child: LocalChild) -> bool:
    """Hold every output and log in the airlock, run the automated rules on them and record the held
    files; False when the airlock is unavailable (the hold is tried again on the next tick)."""
    with db.read() as session:
        local = session.get(LocalChild, child.child_id)
        assert local is not None
        assert local.result is not None
        run, outcome = local.result["run"], local.result.get("outcome", {})
    workspace = staging.Workspace(Path(run["logs_dir"]).parent)  # the run record names its logs folder
    files = staging.collect(child.task, workspace, len(outcome.get("steps", [])))
    try:
        manifest = airlock.hold_outputs(store, child.child_id, child.attempt, files)
    except StoreUnavailable:
        log.warning("airlock unavailable; holding %s later", child.child_id)
        return False
    verdicts = checks.run(list(manifest.files), checks_config, child.project)
    with db.write() as session:
        for held in manifest.files:
            verdict, results = verdicts[held.key]
            key = airlock.held_key(child.child_id, held.key)
            session.merge(HeldFileRecord.of(held, child.child_id, key, verdict, results))
    return True


def empty_airlock(db: Database, store: ObjectStore, child_id: str) -> None:
    """Delete what the airlock holds for an ended child, once; recover() retries it after a crash."""
    airlock.discard(store, child_id)
    with db.write() as session:
        local = session.get(LocalChild, child_id)
        if local is not None:
            local.result = {**(local.result or {}), "airlock_emptied": True}


def spec_to_json(spec: RunSpec) -> dict[str, Any]:
    return {
        "mounts": [[str(m.source), m.target, m.read_only] for m in spec.mounts],
        "logs_dir": str(spec.logs_dir),
    }


def result_to_json(result: RunResult) -> dict[str, Any]:
    return {
        "outcome": result.outcome.value,
        "message": result.message,
        "steps": [
            {"exit_code": s.exit_code, "start_time": s.start_time, "end_time": s.end_time}
            for s in result.steps
        ],
    }
