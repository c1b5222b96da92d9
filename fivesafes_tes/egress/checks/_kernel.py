"""The Linux calls a check process confines itself with (seccomp, Landlock, prctl), through libc."""

from __future__ import annotations

import ctypes
import functools
import os

_PR_SET_NO_NEW_PRIVS = 38


@functools.cache
def libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def checked(result: int, what: str) -> int:
    """`result` of a libc call that sets errno when negative; OSError naming `what` if it failed."""
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what} failed: {os.strerror(errno)}")
    return result


def no_new_privs() -> None:
    """This process and what it starts can never gain privileges (setuid, file capabilities): what
    seccomp filters and Landlock rulesets need from an unprivileged process. Idempotent."""
    checked(libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
