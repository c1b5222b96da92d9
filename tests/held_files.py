"""Held files for tests, made as the agent makes them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fivesafes_tes.egress.held import HeldFile, parse


def held(path: Path, name: str | None = None) -> HeldFile:
    """`path` held under `name` (an output's container path or step-N.stdout; by default
    /outputs/<its file name>), with its size and SHA-256."""
    data = path.read_bytes()
    return HeldFile(parse(name or f"/outputs/{path.name}"), len(data), hashlib.sha256(data).hexdigest(), path)
