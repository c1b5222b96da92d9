"""Hold a finished run's outputs in the airlock: collect them, hold them with their SHA-256, run the
automated rules, and record each held file with its verdict for the output checkers.

Also the run record the agent keeps in `LocalChild.result` (what was mounted, how the run ended), which
the hold reads back after a restart, and emptying the airlock once a child has ended.
"""

from __future__ import annotations

import logging
from typing import Any

from fivesafes_tes.agent import checks, staging
from fivesafes_tes.agent.tables import HeldFileRecord, LocalChild
from fivesafes_tes.db import Database
from fivesafes_tes.egress import airlock
from fivesafes_tes.egress.checks.config import ChecksConfig
from fivesafes_tes.egress.store import ObjectStore, StoreUnavailable
from fivesafes_tes.executors import Collected, RunResult, RunSpec

log = logging.getLogger(__name__)


def hold(
    db: Database, store: ObjectStore, checks_config: ChecksConfig, child: LocalChild, collected: Collected
) -> bool:
    """Hold what the run left that its outputs claim, and its logs, in the airlock; run the automated
    rules on them and record the held files. False when the airlock is unavailable (the hold is tried
    again on the next tick)."""
    with db.read() as session:
        local = session.get(LocalChild, child.child_id)
        assert local is not None
        assert local.result is not None
        outcome = local.result.get("outcome", {})
    files = staging.claimed(child.task, collected, len(outcome.get("steps", [])))
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
    """What the run record keeps of the spec: where the task could read and write, never contents."""
    return {
        "writable": list(spec.writable),
        "inputs": [i.target for i in spec.inputs],
        "datasets": [[d.name, d.target] for d in spec.datasets],
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
