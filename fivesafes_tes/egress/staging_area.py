"""The airlock's staging area: where a backend that runs tasks away from the agent puts what a run
left (the Kubernetes filer's stage-out Job, a relayed TES server's outputs), for the agent to fetch,
hash and hold like any other output.

Keys are `staging/<child>/<attempt>/files/<container path>` and `staging/<child>/<attempt>/logs/
step-N.stdout|stderr`. Nothing under `staging/` is ever released or shown to anyone: release reads only
`held/`, and the agent fetches a staged file into its own folder, then holds it there with its own hash.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from fivesafes_tes.egress.held import InvalidHeldName, LogKey, Stream, name_of, parse
from fivesafes_tes.egress.keys import safe_key
from fivesafes_tes.egress.store import ObjectStore, StoreError
from fivesafes_tes.executors.base import Collected
from fivesafes_tes.tes.outputs import normal_path

log = logging.getLogger(__name__)

ROOT = "staging"
MANIFEST = "manifest.json"
_CHUNK = 1 << 20


class StagedFileRefused(StoreError):
    """Something under a run's staging prefix cannot be a file the run left (an unsafe name, too much)."""


def child_prefix(child_id: str) -> str:
    return safe_key(ROOT, child_id) + "/"


def prefix(child_id: str, attempt: int) -> str:
    return safe_key(ROOT, child_id, str(attempt)) + "/"


def file_key(child_id: str, attempt: int, container_path: str) -> str:
    """Where a file the run left at `container_path` (absolute, normalised) is staged."""
    if normal_path(container_path) != container_path:
        raise StagedFileRefused(f"{container_path!r} is not an absolute, normalised container path")
    return safe_key(ROOT, child_id, str(attempt), "files", container_path[1:])


def folder_key(child_id: str, attempt: int, container_folder: str) -> str:
    """The key prefix (ending in '/') a writable folder's files are staged under."""
    if container_folder == "/":
        return safe_key(ROOT, child_id, str(attempt), "files") + "/"
    return file_key(child_id, attempt, container_folder) + "/"


def log_key(child_id: str, attempt: int, step: int, stream: str) -> str:
    return safe_key(ROOT, child_id, str(attempt), "logs", name_of(LogKey(step, Stream(stream))))


def url(store: ObjectStore, key: str) -> str:
    """The s3:// URL of a staging key, for a TES server or filer inside the TRE to write to."""
    return f"s3://{store.bucket}/{key}"


def manifest_key(child_id: str, attempt: int) -> str:
    """Where a stager may write its own record of what it staged (the Kubernetes filer does): `fetch`
    skips it, and nothing else outside `files/` and `logs/`."""
    return prefix(child_id, attempt) + MANIFEST


def fetch(store: ObjectStore, child_id: str, attempt: int, scratch: Path, *, max_bytes: int) -> Collected:
    """Download everything staged for this attempt into `scratch` (the agent's own folder): the files
    by container path, the logs by step. Refuses a name that is not a container path or log, and more
    than `max_bytes` in all (the run's own disk limit): the stager may be ours, but what it copies is
    the task's."""
    base = prefix(child_id, attempt)
    collected = Collected()
    total = 0
    for n, item in enumerate(store.list(base)):
        rest = item.key[len(base) :]
        if rest == MANIFEST:
            continue
        total += item.size
        if total > max_bytes:
            raise StagedFileRefused(
                f"the run left more than {max_bytes} bytes in its writable folders and logs"
            )
        local = scratch / str(n)
        found = _staged_as(rest)
        if found is None:
            raise StagedFileRefused(f"{item.key!r} is not a staged file or log")
        _download(store, item.key, local)
        if isinstance(found, LogKey):
            collected.logs[(found.step, found.stream.value)] = local
        else:
            collected.files[found] = local
    return collected


def _staged_as(rest: str) -> str | LogKey | None:
    """The container path or log a key below an attempt's prefix stands for; None for anything else."""
    kind, _, name = rest.partition("/")
    if kind == "files" and normal_path("/" + name) == "/" + name:
        return "/" + name
    if kind == "logs":
        try:
            key = parse(name)
        except InvalidHeldName:
            return None
        return key if isinstance(key, LogKey) else None
    return None


def _download(store: ObjectStore, key: str, target: Path) -> None:
    """The object's bytes into `target` (mode 0600), checked against its recorded SHA-256 if it has one."""
    stored = store.head(key)
    if stored is not None and stored.sha256:
        store.get_to_file(key, target, expect_sha256=stored.sha256)
        return
    partial = target.with_name(f".{target.name}.{secrets.token_hex(6)}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            store.copy_unverified(key, out)
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def discard(store: ObjectStore, child_id: str) -> int:
    """Remove everything staged for the child (every attempt)."""
    return store.delete_prefix(child_prefix(child_id))
