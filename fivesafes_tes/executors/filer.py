"""The filer: our own step that moves a Kubernetes run's files between the airlock side and the run's
volume, in pods of our image (`fivesafes-tes filer stage-in|stage-out`), so that no task pod shares a
folder with the agent.

`stage_in` runs as the first init container of the task pod, as the task's uid, with no network: it
writes each input from the run's inputs Secret into the volume, read-only, and makes the writable
folders. `stage_out` runs in a Job of its own once the task pod has ended, with the volume mounted
read-only and one capability: an S3 presigned POST that allows uploads under this child attempt's
staging prefix and nothing else (no read, no list, no other key). It uploads every regular file of the
writable folders (symbolic links are never followed), then the manifest (container path, size, SHA-256
of each file) last: the manifest's presence tells the agent the upload is complete.

Only the standard library: the filer holds no credential of ours and needs no SDK.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import secrets
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

INDEX = "index.json"  # in the inputs Secret: {"inputs": {data key: volume path}, "folders": [volume path]}
_CHUNK = 1 << 20
_ERROR_PARTS = re.compile(r"<(?:Code|Message)>([^<]{0,300})</(?:Code|Message)>")


class FilerError(RuntimeError):
    """Staging could not finish; the message says which file and why, in plain words."""


def _inside(root: Path, relative: str) -> Path:
    """`relative` (a volume path the agent chose) below `root`; refuses one that could leave it."""
    part = PurePosixPath(relative)
    if part.is_absolute() or ".." in part.parts or not part.parts:
        raise FilerError(f"{relative!r} is not a path inside the run's volume")
    return root.joinpath(*part.parts)


def stage_in(inputs_dir: Path, volume_root: Path) -> int:
    """Write the inputs the index names into the volume (mode 0444) and make the writable folders;
    return how many inputs were written. Safe to repeat: a file is replaced whole, never half-written."""
    index = json.loads((inputs_dir / INDEX).read_text())
    for folder in index["folders"]:
        path = _inside(volume_root, folder)
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o755)
    for key, target in sorted(index["inputs"].items()):
        path = _inside(volume_root, target)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{secrets.token_hex(6)}.partial")
        with (inputs_dir / key).open("rb") as source, partial.open("xb") as out:
            while chunk := source.read(_CHUNK):
                out.write(chunk)
        partial.chmod(0o444)
        partial.replace(path)
    return len(index["inputs"])


@dataclass(frozen=True)
class StagedFile:
    path: str  # container path
    size: int
    sha256: str


def stage_out(volume_root: Path, capability: dict[str, Any], *, timeout_s: float = 300.0) -> list[StagedFile]:
    """Upload every regular file below the writable folders the capability names, then the manifest.

    `capability` is what the agent put in the run's stage-out Secret: the presigned POST (`url`,
    `fields`), each writable folder (`folders`: its `volume` path, container `path` and key prefix
    `key`), and the manifest's key (`manifest`)."""
    staged = []
    for folder in capability["folders"]:
        root = _inside(volume_root, folder["volume"])
        for path, relative in _regular_files(root):
            container_path = posixpath.join(folder["path"], relative)
            size, sha256 = _post_file(capability, folder["key"] + relative, path, timeout_s)
            staged.append(StagedFile(container_path, size, sha256))
    manifest = json.dumps({"files": [f.__dict__ for f in staged]}, sort_keys=True).encode()
    _post(capability, capability["manifest"], [manifest], len(manifest), timeout_s)
    return staged


def _regular_files(root: Path) -> Iterator[tuple[Path, str]]:
    """(path, path relative to root in POSIX form) of each regular file below root, in a stable order;
    links, devices, sockets and pipes are left where they are."""
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                yield path, path.relative_to(root).as_posix()


def _post_file(capability: dict[str, Any], key: str, path: Path, timeout_s: float) -> tuple[int, str]:
    """POST one file, hashing the bytes as they are sent: (size, SHA-256)."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size

        def chunks() -> Iterator[bytes]:
            sent = 0
            while chunk := handle.read(_CHUNK):
                sent += len(chunk)
                digest.update(chunk)
                yield chunk
            if sent != size:
                raise FilerError(f"{path} changed size while it was uploaded")

        _post(capability, key, chunks(), size, timeout_s)
    return size, digest.hexdigest()


def _post(capability: dict[str, Any], key: str, body: Any, size: int, timeout_s: float) -> None:
    """One browser-style POST upload (multipart/form-data, the file last, as S3 requires), streamed."""
    boundary = secrets.token_hex(16)
    fields = {**capability["fields"], "key": key}
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="file"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def stream() -> Iterator[bytes]:
        yield head
        yield from body
        yield tail

    request = urllib.request.Request(
        capability["url"],
        data=stream(),
        method="POST",
        headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size + len(tail)),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        # Only S3's error code and message: the rest of its answer may echo the signature.
        body = exc.read(4000).decode(errors="replace")
        detail = " ".join(m.group(1) for m in _ERROR_PARTS.finditer(body))
        raise FilerError(f"the airlock refused {key!r}: HTTP {exc.code} {detail}".rstrip()) from exc
    except OSError as exc:
        raise FilerError(f"could not reach the airlock to upload {key!r}: {exc}") from exc


__all__ = ["INDEX", "FilerError", "StagedFile", "stage_in", "stage_out"]
