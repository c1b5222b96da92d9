"""The airlock: object store access and holding outputs until they are checked and released."""

from fivesafes_tes.egress.airlock import (
    HeldFile,
    HeldFileSpec,
    HoldConflict,
    Manifest,
    ManifestInvalid,
    StaleAttempt,
    UnsafeOutput,
    discard,
    held_key,
    held_prefix,
    hold_outputs,
    manifest_key,
    read_manifest,
)
from fivesafes_tes.egress.keys import UnsafeKey, safe_key
from fivesafes_tes.egress.store import (
    ChecksumMismatch,
    ObjectExists,
    ObjectMissing,
    ObjectStore,
    StoredObject,
    StoreError,
    StoreSettings,
    StoreUnavailable,
)

__all__ = [
    "ChecksumMismatch",
    "HeldFile",
    "HeldFileSpec",
    "HoldConflict",
    "Manifest",
    "ManifestInvalid",
    "ObjectExists",
    "ObjectMissing",
    "ObjectStore",
    "StaleAttempt",
    "StoreError",
    "StoreSettings",
    "StoreUnavailable",
    "StoredObject",
    "UnsafeKey",
    "UnsafeOutput",
    "discard",
    "held_key",
    "held_prefix",
    "hold_outputs",
    "manifest_key",
    "read_manifest",
    "safe_key",
]
