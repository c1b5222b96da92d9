"""Time-ordered task ids (UUIDv7) and the opaque page tokens built on them."""

from __future__ import annotations

import base64
import binascii
import os
import re
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def new_task_id() -> str:
    """A UUIDv7 (RFC 9562) string: ids sort by creation time, and within one millisecond
    of one process they keep increasing (12-bit counter in rand_a, method 1)."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms, _counter = ms, int.from_bytes(os.urandom(2), "big") & 0x3FF
        else:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms, _counter = _last_ms + 1, 0
            ms = _last_ms
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= _counter << 64
    value |= 0b10 << 62
    value |= int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def is_task_id(value: str) -> bool:
    return bool(_ID.match(value))


class BadPageToken(ValueError):
    """A page_token this server did not issue."""


def encode_page_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str:
    try:
        value = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadPageToken(
            "page_token is not one this server issued; pass next_page_token unchanged"
        ) from None
    if not is_task_id(value):
        raise BadPageToken("page_token is not one this server issued; pass next_page_token unchanged")
    return value
