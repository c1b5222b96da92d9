"""The TES output-path rules, once: which container folder an output is collected from, and which
files in it the output claims. Staging collects by these rules inside the TRE and the gateway
delivers by them outside it, so a file is held and delivered under the same reading of the request.

TES 1.1: a FILE output names one file; a DIRECTORY output every file below it; a `path` with
wildcards (`*`, `?`, `[`) every file matching it, kept at its path below `path_prefix` (by default
the pattern's own folder). Pure functions of the request: no I/O.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import PurePosixPath
from typing import Any

WILDCARDS = "*?["


def normal_path(path: str) -> str | None:
    """The path as the engine reads it, or None unless it is absolute, below / and free of '..'."""
    normal = "/" + posixpath.normpath(path).lstrip("/")  # POSIX keeps a leading "//" apart; engines do not
    if not path.startswith("/") or normal in ("/", "/.") or ".." in path.split("/"):
        return None
    return normal


def is_pattern(path: str) -> bool:
    """Whether an output's `path` is a wildcard pattern rather than one file or folder."""
    return any(c in path for c in WILDCARDS)


def output_folder(output: Mapping[str, Any]) -> tuple[str, str]:
    """The field and the path of the folder a TES output is collected from (what is mounted writable):
    a wildcard output's `path_prefix` (or the folder of its pattern), a DIRECTORY itself, a file's folder."""
    path = str(output.get("path") or "")
    if is_pattern(path):
        if output.get("path_prefix"):
            return "path_prefix", str(output["path_prefix"])
        return "path", posixpath.dirname(path) or "/"
    if output.get("type") == "DIRECTORY":
        return "path", path
    return "path", posixpath.dirname(path) or "/"


def claim(output: Mapping[str, Any], path: str) -> str | None:
    """Whether `output` claims the file at container `path` (absolute, normalised), and where it goes
    below the output's `url`: "" for the url itself (a FILE output), the path below the folder for a
    DIRECTORY or a wildcard's `path_prefix`. None when the output does not claim the file. A claimed
    file is always below `output_folder(output)`: nothing outside the mounted folder is ever claimed."""
    wanted = normal_path(str(output.get("path") or ""))
    folder = normal_path(output_folder(output)[1])
    if wanted is None or folder is None or normal_path(path) != path:
        return None  # a path not as the engine reads it ('..', '//', '/./') is no output's: fail closed
    below = PurePosixPath(folder) in PurePosixPath(path).parents
    if is_pattern(wanted):
        return posixpath.relpath(path, folder) if below and fnmatchcase(path, wanted) else None
    if output.get("type") == "DIRECTORY":
        return posixpath.relpath(path, folder) if below else None
    return "" if path == wanted else None
