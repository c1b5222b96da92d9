"""What every part of the bench shares: paths, the task it submits, the identity it uses."""

from __future__ import annotations

import copy
import hashlib
import os
import socket
from pathlib import Path
from typing import Any

from bench.loadgen import percentile
from fivesafes_tes.db.engine import MIGRATIONS
from fivesafes_tes.settings import GatewaySettings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
STATE = RESULTS / "state"  # the dev issuer's signing key lives here
SCRATCH = RESULTS / "scratch"  # throw-away databases and server logs of one run
DOCS = ROOT / "docs" / "benchmarks.md"

#: The issuer identity of every token: fixed, so users in a cached database match across runs.
#: Nothing listens there; servers run on a free loopback port.
PUBLIC_URL = "http://fivesafes-bench.localhost"
TES = "/ga4gh/tes/v1"
USER = "bench-alice"  # the requesting user
OTHER_USERS = ("bench-bob", "bench-carol", "bench-dave", "bench-erin")  # so that scoping matters
SPARSE_USER = "bench-frank"  # few tasks among everyone else's many
CREATOR = "bench-creator"
#: Each user works in one project of their own (a task's tag `project` names it); every project
#: runs on both TREs, so each task has two children.
PROJECT_OF = {
    USER: "diabetes-cancer",
    CREATOR: "diabetes-cancer",
    "bench-bob": "respiratory",
    "bench-carol": "cardio",
    "bench-dave": "infection",
    "bench-erin": "maternity",
    SPARSE_USER: "renal",
}
TRES = ("tre-north", "tre-south")
IMAGES = ["fivesafes/*"]  # the image allow-list the gateway runs with

#: A realistic small task, as a researcher's tool would send it (tags included).
TASK: dict[str, Any] = {
    "name": "diabetes-cancer-prevalence",
    "description": "Counts of people with type 2 diabetes and with cancer, by age band.",
    "inputs": [
        {"name": "script", "path": "/analysis/prevalence.py", "url": "s3://code/prevalence/v3/prevalence.py"},
        {
            "name": "codes",
            "path": "/analysis/codes.csv",
            "content": "code,condition\nE11,diabetes\nC50,cancer\n",
        },
    ],
    "outputs": [{"name": "table", "path": "/outputs/prevalence.csv", "url": "s3://results/prevalence.csv"}],
    "resources": {"cpu_cores": 1, "ram_gb": 2.0, "backend_parameters": {"tre": "tre-north"}},
    "executors": [
        {
            "image": "fivesafes/analysis-python:1.0",
            "command": ["python", "/analysis/prevalence.py", "--codes", "/analysis/codes.csv"],
            "workdir": "/analysis",
            "stdout": "/outputs/stdout.txt",
            "env": {"AGE_BANDS": "0-17,18-39,40-64,65+"},
        }
    ],
    "tags": {"project": "diabetes-cancer", "study": "prevalence-2026"},
}


def task_body(name: str | None = None, tags: dict[str, str] | None = None) -> dict[str, Any]:
    body = copy.deepcopy(TASK)
    if name is not None:
        body["name"] = name
    if tags is not None:
        body["tags"] = tags
    return body


def settings(database_url: str) -> GatewaySettings:
    """The gateway's settings in every bench process (server and orchestrator alike)."""
    return GatewaySettings(
        data_dir=STATE,
        database_url=database_url,
        public_url=PUBLIC_URL,
        dev_issuer=True,
        allowed_images=IMAGES,
    )


def schema_key() -> str:
    """Changes whenever a migration does: cached databases are keyed by it."""
    versions = sorted((MIGRATIONS / "versions").glob("*.py"))
    digest = hashlib.sha256()
    for path in versions:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    head = versions[-1].stem.split("_", 1)[0] if versions else "none"
    return f"r{head}-{digest.hexdigest()[:10]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_results(results: dict[str, Any], out: Path, root: Path) -> None:
    """A bench part's JSON results at `out`, and a line saying where (relative to `root` when inside)."""
    import json

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(root) if out.is_relative_to(root) else out}")


def ms_summary(values: list[float]) -> dict[str, float]:
    """p50, p95 and max of `values` (seconds), in milliseconds."""
    ordered = sorted(values)
    return {
        "p50_ms": percentile(ordered, 50) * 1000,
        "p95_ms": percentile(ordered, 95) * 1000,
        "max_ms": ordered[-1] * 1000,
    }
