"""The airlock: object store access and holding outputs until they are checked and released."""

from fivesafes_tes.egress.airlock import (
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
from fivesafes_tes.egress.held import HeldFile, HeldKey, LogKey, OutputKey, Stream, name_of, parse
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
    "HeldKey",
    "HoldConflict",
    "LogKey",
    "Manifest",
    "ManifestInvalid",
    "ObjectExists",
    "ObjectMissing",
    "ObjectStore",
    "OutputKey",
    "StaleAttempt",
    "StoreError",
    "StoreSettings",
    "StoreUnavailable",
    "StoredObject",
    "Stream",
    "UnsafeKey",
    "UnsafeOutput",
    "discard",
    "held_key",
    "held_prefix",
    "hold_outputs",
    "manifest_key",
    "name_of",
    "parse",
    "read_manifest",
    "safe_key",
]
