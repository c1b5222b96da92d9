"""Holding a task's outputs in the TRE's airlock bucket until they are checked and reviewed.

Layout under one child's prefix::

    held/<child_id>/outputs/<container path without its leading />
    held/<child_id>/logs/step-<N>.stdout | step-<N>.stderr
    held/<child_id>/manifest.json        written last: its presence means the hold is complete

Holding is idempotent: after a crash it is simply run again, skipping files already held with the
same SHA-256, removing strays a crashed attempt left, and writing the manifest only if absent.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from fivesafes_tes import failpoints
from fivesafes_tes.egress.keys import UnsafeKey, safe_key
from fivesafes_tes.egress.store import ObjectExists, ObjectMissing, ObjectStore

log = logging.getLogger(__name__)

HeldKind = Literal["output", "stdout", "stderr"]
MANIFEST_NAME = "manifest.json"


class HoldConflict(Exception):
    """This attempt's hold is already complete with different files; it will not be rewritten."""


class StaleAttempt(Exception):
    """A newer attempt already holds outputs for this child; an older one may not replace them."""


class UnsafeOutput(ValueError):
    """An output cannot be held: its path would escape the prefix, or it is not a regular file."""


class ManifestInvalid(Exception):
    """The stored manifest is not one we wrote."""


@dataclass(frozen=True)
class HeldFileSpec:
    """One file the agent wants held. Logs need `step`; outputs need an absolute `container_path`."""

    container_path: str | None
    host_path: Path
    kind: HeldKind
    step: int | None = None


class HeldFile(BaseModel):
    key: str
    container_path: str | None
    kind: HeldKind
    step: int | None
    size: int
    sha256: str


class Manifest(BaseModel):
    child_id: str
    attempt: int
    created_at: datetime
    files: list[HeldFile]


def _child(child_id: str) -> str:
    """The child id as one key segment: one child's prefix must never contain another's."""
    try:
        segment = safe_key(child_id)
    except UnsafeKey as exc:
        raise UnsafeOutput(f"child id: {exc}") from exc
    if segment != child_id or "/" in segment:
        raise UnsafeOutput(f"child id {child_id!r} must be a single key segment")
    return segment


def held_prefix(child_id: str) -> str:
    return f"held/{_child(child_id)}/"


def manifest_key(child_id: str) -> str:
    return held_prefix(child_id) + MANIFEST_NAME


def held_key(child_id: str, spec: HeldFileSpec) -> str:
    """Where a file is held. Raises `UnsafeOutput` for paths that could escape the prefix."""
    try:
        if spec.kind == "output":
            path = spec.container_path or ""
            if not path.startswith("/"):
                raise UnsafeOutput(f"output path {path!r} must be an absolute container path")
            return safe_key("held", _child(child_id), "outputs", path[1:])
        if spec.kind not in ("stdout", "stderr"):
            raise UnsafeOutput(f"unknown kind {spec.kind!r}: expected output, stdout or stderr")
        if not isinstance(spec.step, int) or isinstance(spec.step, bool) or spec.step < 0:
            raise UnsafeOutput(f"{spec.kind} needs the executor's step number (0, 1, ...)")
        return safe_key("held", _child(child_id), "logs", f"step-{spec.step}.{spec.kind}")
    except UnsafeKey as exc:
        raise UnsafeOutput(str(exc)) from exc


def _regular_file(path: Path) -> os.stat_result:
    try:
        info = os.lstat(path)
    except FileNotFoundError as exc:
        raise UnsafeOutput(f"{path} does not exist") from exc
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeOutput(f"{path} is not a regular file (symlinks, directories and devices are never held)")
    return info


def _digest(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a regular file, read without following a symlink swapped in meanwhile."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        return hashlib.file_digest(handle, "sha256").hexdigest(), size


def read_manifest(store: ObjectStore, child_id: str) -> Manifest | None:
    """The manifest of a complete hold, or None while the hold is incomplete (or discarded)."""
    key = manifest_key(child_id)
    try:
        manifest = Manifest.model_validate_json(store.get_bytes(key))
    except ObjectMissing:
        return None
    except ValidationError as exc:
        raise ManifestInvalid(f"{key} is not a valid manifest") from exc
    if manifest.child_id != child_id:
        raise ManifestInvalid(f"{key} names child {manifest.child_id!r}, not {child_id!r}")
    return manifest


def hold_outputs(store: ObjectStore, child_id: str, attempt: int, files: list[HeldFileSpec]) -> Manifest:
    """Hold every file in the airlock under the child's prefix and return the manifest.

    Every spec is validated and hashed before anything is written. Running this again for the same
    attempt and files returns the same manifest; the same attempt with different files raises
    `HoldConflict`; an attempt newer than the held one replaces it; an older one raises `StaleAttempt`.
    """
    held: list[HeldFile] = []
    paths: dict[str, Path] = {}
    for spec in files:
        key = held_key(child_id, spec)
        if key in paths:
            raise UnsafeOutput(f"two files would be held as {key!r}")
        paths[key] = path = Path(spec.host_path)
        _regular_file(path)
        sha256, size = _digest(path)
        held.append(
            HeldFile(
                key=key,
                container_path=spec.container_path,
                kind=spec.kind,
                step=spec.step,
                size=size,
                sha256=sha256,
            )
        )
    held.sort(key=lambda f: f.key)
    mkey = manifest_key(child_id)

    existing = read_manifest(store, child_id)
    if existing is not None:
        if _settled(existing, attempt, held):
            return existing
        store.delete(mkey)  # superseded by this newer attempt: the hold is incomplete again

    for entry in held:
        current = store.head(entry.key)
        if current is None or current.sha256 != entry.sha256 or current.size != entry.size:
            store.put_file(entry.key, paths[entry.key], sha256=entry.sha256)
    for item in store.list(held_prefix(child_id)):
        if item.key not in paths and item.key != mkey:
            log.info("removing %s: left by an earlier, unfinished hold of child %s", item.key, child_id)
            store.delete(item.key)

    manifest = Manifest(child_id=child_id, attempt=attempt, created_at=datetime.now(UTC), files=held)
    try:
        store.put_bytes(
            mkey, manifest.model_dump_json(indent=2).encode(), if_absent=True, content_type="application/json"
        )
    except ObjectExists:
        winner = read_manifest(store, child_id)
        if winner is None or not _settled(winner, attempt, held):
            raise HoldConflict(
                f"child {child_id} attempt {attempt}: another hold completed meanwhile"
            ) from None
        return winner
    log.info("held %d file(s) of child %s attempt %d", len(held), child_id, attempt)
    return manifest


def _settled(existing: Manifest, attempt: int, files: list[HeldFile]) -> bool:
    """True if `existing` already is this hold; False if this attempt may replace it."""
    if existing.attempt > attempt:
        raise StaleAttempt(
            f"child {existing.child_id}: attempt {existing.attempt} already holds outputs; "
            f"attempt {attempt} is stale"
        )
    if existing.attempt < attempt:
        return False
    if existing.files != files:
        raise HoldConflict(
            f"child {existing.child_id} attempt {attempt} is already held with different files; "
            "a complete hold is never rewritten"
        )
    return True


def discard(store: ObjectStore, child_id: str) -> int:
    """Delete everything held for the child (cancel, or withheld outputs); returns how many files.

    The manifest goes first, so a reader never sees a complete hold with files missing.
    """
    store.delete(manifest_key(child_id))
    failpoints.reach("airlock.discarded")
    return store.delete_prefix(held_prefix(child_id))
