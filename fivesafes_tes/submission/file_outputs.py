"""Released outputs written to `file://` destinations, inside the one folder a deployment lets the
gateway write (`FIVESAFES_FILE_OUTPUT_ROOT`) and nowhere else.

A `file://` url names a path as the researcher's tools see it, so the folder is shared with them at
the same path. Nothing outside it is ever written: a url that leaves it (`..`, another host, a path
elsewhere) is refused at submission and again before a byte is written, and the folders on the way
are opened one at a time without following symbolic links, so a link planted inside cannot lead out.
A file already there is never replaced by other content.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import secrets
import stat
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

SCHEME = "file"


class UnsafeDestination(ValueError):
    """A file:// url this gateway will not write to; the message says why and what to change."""


class DestinationExists(Exception):
    """A file with other content is already where a released output was to be written."""


def is_file_url(url: str) -> bool:
    return urlsplit(url).scheme.lower() == SCHEME


def relative_path(url: str, root: str) -> PurePosixPath:
    """Where under `root` the file:// `url` points, as a path relative to it; UnsafeDestination
    when it points anywhere else."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise UnsafeDestination(
            f"{url!r} names host {parts.netloc!r}; a file:// url here names a path on the gateway's own "
            "file system: file:///path"
        )
    if parts.query or parts.fragment:
        raise UnsafeDestination(f"{url!r} has a query or fragment; a file:// url here names a path only")
    path = unquote(parts.path)
    if "\0" in path or ".." in path.split("/") or not path.startswith("/"):
        raise UnsafeDestination(f"{url!r} must name an absolute path without '..'")
    inside = PurePosixPath(posixpath.normpath(path)).relative_to("/")
    base = PurePosixPath(posixpath.normpath(root)).relative_to("/")
    if base not in inside.parents:
        raise UnsafeDestination(
            f"{url!r} is outside {root}, the folder this gateway writes file:// outputs to; name a path "
            f"under it (file://{posixpath.normpath(root)}/...)"
        )
    return inside.relative_to(base)


def write(root: str, url: str, fill: Callable[[BinaryIO], None], sha256: str) -> None:
    """Write a released output to the place `url` names under `root`. `fill` writes the file's bytes
    and raises if they do not hash to `sha256`; only then does the file appear, and only where no
    file was (one with the same content counts as written before). Raises UnsafeDestination,
    DestinationExists, OSError."""
    relative = relative_path(url, root)
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY)  # the deployment's folder may be a link itself
    try:
        for part in relative.parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, dir_fd=folder)
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise UnsafeDestination(
                    f"{url!r}: {part!r} on the way is not a folder (a symbolic link is never followed)"
                ) from exc
            os.close(folder)
            folder = inner
        _place(folder, relative.name, url, fill, sha256)
    finally:
        os.close(folder)


def _place(folder: int, name: str, url: str, fill: Callable[[BinaryIO], None], sha256: str) -> None:
    if _holds(folder, name, url, sha256):
        return
    partial = f".{name}.{secrets.token_hex(6)}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        try:  # a link never replaces what is there, unlike a rename
            os.link(partial, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
        except FileExistsError:
            if not _holds(folder, name, url, sha256):
                raise
    finally:
        os.unlink(partial, dir_fd=folder)


def _holds(folder: int, name: str, url: str, sha256: str) -> bool:
    """Whether `name` is already a regular file with this content; DestinationExists if it is
    anything else."""
    try:
        found = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISREG(found.st_mode):
        digest = hashlib.sha256()
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder)
        with os.fdopen(fd, "rb") as existing:
            while chunk := existing.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() == sha256:
            return True
    raise DestinationExists(f"{url} exists already with other content; it is never replaced")
