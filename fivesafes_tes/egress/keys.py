"""Object keys: how a key is built from parts, none of which may escape its place.

Keys never contain user-controlled path segments unsanitised (DESIGN, Storage): every key the airlock
and the results store write is made by `safe_key`, and the results store's layout is `released_key`.
"""

from __future__ import annotations

import unicodedata


class UnsafeKey(ValueError):
    """A key part would escape its prefix or carries characters we never put in keys."""


_MAX_KEY_BYTES = 1024  # S3's limit
_MAX_SEGMENT_BYTES = 255  # a file name on every filesystem the key may be downloaded to
# Control, format (bidi overrides, zero-width), surrogate, private-use, unassigned, line/paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def shown(value: str) -> str:
    """A user-supplied string for an error message: escaped, and short."""
    return repr(value if len(value) <= 80 else value[:77] + "...")


def safe_key(*parts: str) -> str:
    """Join parts into an object key, refusing anything that could escape the prefix.

    Each part may hold several `/`-separated segments (a container path without its leading
    `/`). Refused: no parts, an empty part or segment (`a//b`, a trailing `/`), an absolute part,
    `..`, backslashes, control/format/private-use/unassigned/line-separator characters, over-long segments
    or keys. `.` segments are dropped and text is NFC-normalised, so `safe_key(k) == k` for any
    key this returns.
    """
    if not parts:
        raise UnsafeKey("an object key needs at least one part")
    segments: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"key parts must be str, not {type(part).__name__}")
        if not part:
            raise UnsafeKey("a key part is empty")
        if part.startswith("/"):
            raise UnsafeKey(f"key part {shown(part)} is absolute")
        for segment in unicodedata.normalize("NFC", part).split("/"):
            if segment == ".":
                continue
            if segment == "":
                raise UnsafeKey(f"key part {shown(part)} has an empty segment ('//' or a trailing '/')")
            if segment == "..":
                raise UnsafeKey(f"key part {shown(part)} contains '..'")
            if "\\" in segment:
                raise UnsafeKey(f"key part {shown(part)} contains a backslash")
            if any(unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in segment):
                raise UnsafeKey(f"key part {shown(part)} contains a control or invisible character")
            if len(segment.encode()) > _MAX_SEGMENT_BYTES:
                raise UnsafeKey(f"key part {shown(part)} has a segment over {_MAX_SEGMENT_BYTES} bytes")
            segments.append(segment)
    if not segments:
        raise UnsafeKey("the key has no segments left after dropping '.'")
    key = "/".join(segments)
    if len(key.encode()) > _MAX_KEY_BYTES:
        raise UnsafeKey(f"the key is over {_MAX_KEY_BYTES} bytes")
    return key


def released_key(task_id: str, tre: str, kind: str, name_part: str) -> str:
    """Where a released file is kept in the gateway's results store: by task, TRE and kind, then the
    file's name (an output's container path without its leading `/`, or a log's `step-N.stdout`)."""
    return safe_key("released", task_id, tre, kind, name_part)
