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
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

from fivesafes_tes import failpoints
from fivesafes_tes.egress.held import (
    HeldFile,
    HeldKey,
    InvalidHeldName,
    Kind,
    OutputKey,
    from_parts,
    name_of,
    parse,
)
from fivesafes_tes.egress.keys import UnsafeKey, safe_key
from fivesafes_tes.egress.store import ObjectExists, ObjectMissing, ObjectStore

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


class HoldConflict(Exception):
    """This attempt's hold is already complete with different files; it will not be rewritten."""


class StaleAttempt(Exception):
    """A newer attempt already holds outputs for this child; an older one may not replace them."""


class UnsafeOutput(ValueError):
    """An output cannot be held: its path would escape the prefix, or it is not a regular file."""


class ManifestInvalid(Exception):
    """The stored manifest is not one we wrote."""


class _StoredFile(BaseModel):
    """A held file as the manifest stores it (the format holds written before `HeldFile` still read)."""

    key: str
    container_path: str | None
    kind: Kind
    step: int | None
    size: int
    sha256: str


class _StoredManifest(BaseModel):
    child_id: str
    attempt: int
    created_at: datetime
    files: list[_StoredFile]


@dataclass(frozen=True)
class Manifest:
    """A complete hold: which attempt's files, held when; the files sorted by their store key."""

    child_id: str
    attempt: int
    created_at: datetime
    files: tuple[HeldFile, ...]

    def to_json(self) -> bytes:
        stored = _StoredManifest(
            child_id=self.child_id,
            attempt=self.attempt,
            created_at=self.created_at,
            files=[
                _StoredFile(
                    key=held_key(self.child_id, f.key),
                    container_path=f.key.path if isinstance(f.key, OutputKey) else None,
                    kind=f.kind,
                    step=f.step,
                    size=f.size,
                    sha256=f.sha256,
                )
                for f in self.files
            ],
        )
        return stored.model_dump_json(indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Raises `ValidationError`, or `InvalidHeldName` for a file that is not one `hold_outputs` held."""
        stored = _StoredManifest.model_validate_json(data)
        files = []
        for f in stored.files:
            key = from_parts(f.container_path or f"step-{f.step}.{f.kind}", f.kind, f.step)
            if held_key(stored.child_id, key) != f.key:
                raise InvalidHeldName(f"{f.key!r} is not where {name_of(key)!r} is held")
            files.append(HeldFile(key, f.size, f.sha256))
        return cls(stored.child_id, stored.attempt, stored.created_at, tuple(files))


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


def held_key(child_id: str, key: HeldKey) -> str:
    """Where a file is held. Raises `UnsafeOutput` for a key `parse` would not give back (a path not
    absolute or not normalised, a negative step): such a path could escape the prefix."""
    name = name_of(key)
    try:
        if parse(name) != key:
            raise InvalidHeldName(f"{name[:80]!r} is not a normalised name")
        if isinstance(key, OutputKey):
            return safe_key("held", _child(child_id), "outputs", key.path[1:])
        return safe_key("held", _child(child_id), "logs", name)
    except (UnsafeKey, InvalidHeldName) as exc:
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
        manifest = Manifest.from_json(store.get_bytes(key))
    except ObjectMissing:
        return None
    except (ValidationError, InvalidHeldName) as exc:
        raise ManifestInvalid(f"{key} is not a valid manifest") from exc
    if manifest.child_id != child_id:
        raise ManifestInvalid(f"{key} names child {manifest.child_id!r}, not {child_id!r}")
    return manifest


def hold_outputs(store: ObjectStore, child_id: str, attempt: int, files: Mapping[HeldKey, Path]) -> Manifest:
    """Hold every collected file in the airlock under the child's prefix and return the manifest,
    whose files are the same keys, hashed (each with its local copy: the rules read those).

    Every file is validated and hashed before anything is written. Running this again for the same
    attempt and files returns the same manifest; the same attempt with different files raises
    `HoldConflict`; an attempt newer than the held one replaces it; an older one raises `StaleAttempt`.
    """
    by_key: dict[str, HeldFile] = {}
    for held_as, local in files.items():
        key = held_key(child_id, held_as)
        if key in by_key:
            raise UnsafeOutput(f"two files would be held as {key!r}")
        _regular_file(local)
        sha256, size = _digest(local)
        by_key[key] = HeldFile(held_as, size, sha256, local)
    held = [by_key[key] for key in sorted(by_key)]
    mkey = manifest_key(child_id)

    existing = read_manifest(store, child_id)
    if existing is not None:
        if _settled(existing, attempt, held):
            return _with_copies(existing, held)
        store.delete(mkey)  # superseded by this newer attempt: the hold is incomplete again

    for key, entry in by_key.items():
        current = store.head(key)
        if current is None or current.sha256 != entry.sha256 or current.size != entry.size:
            store.put_file(key, entry.path, sha256=entry.sha256)
    for item in store.list(held_prefix(child_id)):
        if item.key not in by_key and item.key != mkey:
            log.info("removing %s: left by an earlier, unfinished hold of child %s", item.key, child_id)
            store.delete(item.key)

    manifest = Manifest(child_id, attempt, datetime.now(UTC), tuple(held))
    try:
        store.put_bytes(mkey, manifest.to_json(), if_absent=True, content_type="application/json")
    except ObjectExists:
        winner = read_manifest(store, child_id)
        if winner is None or not _settled(winner, attempt, held):
            raise HoldConflict(
                f"child {child_id} attempt {attempt}: another hold completed meanwhile"
            ) from None
        return _with_copies(winner, held)
    log.info("held %d file(s) of child %s attempt %d", len(held), child_id, attempt)
    return manifest


def _with_copies(manifest: Manifest, held: list[HeldFile]) -> Manifest:
    """The stored manifest with the local copies this hold was made from."""
    return replace(manifest, files=tuple(held))


def _settled(existing: Manifest, attempt: int, files: list[HeldFile]) -> bool:
    """True if `existing` already is this hold; False if this attempt may replace it."""
    if existing.attempt > attempt:
        raise StaleAttempt(
            f"child {existing.child_id}: attempt {existing.attempt} already holds outputs; "
            f"attempt {attempt} is stale"
        )
    if existing.attempt < attempt:
        return False
    if tuple(files) != existing.files:
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
