"""What a run was made on: machine, operating system, Python, load average, git commit.

Recorded with every run so that a figure on the page can be traced to the code and the conditions
that produced it; a before/after comparison says when the two runs were not made alike.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.common import ROOT

#: What the bench writes itself: a change there does not make the code under test dirty.
OWN_OUTPUT = ("docs/benchmarks.md", "docs/benchmarks", "bench/results")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg gives them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _field(path: str, prefix: str, separator: str = ":") -> str:
    try:
        with Path(path).open() as handle:
            for line in handle:
                if line.startswith(prefix):
                    return line.split(separator, 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def machine() -> dict[str, Any]:
    ram_kib = _field("/proc/meminfo", "MemTotal:").split()
    return {
        "cpu_model": _field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "nproc": len(os.sched_getaffinity(0)),
        "ram_gib": round(int(ram_kib[0]) / 1024 / 1024, 1) if ram_kib else None,
        "os": _field("/etc/os-release", "PRETTY_NAME=", "=") or platform.system(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def commit() -> dict[str, Any]:
    """HEAD and whether the tree differs from it (the bench's own output aside). A run from an
    exported tree (no .git) takes the commit from $FIVESAFES_BENCH_COMMIT and cannot tell dirt."""
    if os.environ.get("FIVESAFES_BENCH_COMMIT"):
        return {"commit": os.environ["FIVESAFES_BENCH_COMMIT"], "dirty": None, "dirty_paths": []}
    try:
        head = _git("rev-parse", "--short=9", "HEAD").strip()
        excluded = [f":(exclude){path}" for path in OWN_OUTPUT]
        status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *excluded)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None, "dirty_paths": []}
    paths = [line[3:] for line in status.splitlines() if line.strip()]  # "XY path"
    return {"commit": head, "dirty": bool(paths), "dirty_paths": paths[:20]}
