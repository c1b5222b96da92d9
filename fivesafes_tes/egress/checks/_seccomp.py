"""No network for check processes: a seccomp filter under which `socket()` fails with EPERM.

Rules read files that tasks wrote. Should a file exploit a parser, the process it runs in can open
no connection to send what it reads anywhere. Also refused: `io_uring_setup` (io_uring can open
sockets without the socket syscall) and any syscall of another ABI (32-bit or x32 calls, whose
numbers differ). The pipe to the agent, inherited, keeps working. Applied to every thread of the
process (TSYNC), after `no_new_privs`, as any unprivileged process may.

Linux on x86_64 and aarch64; elsewhere `deny_network` raises `NotImplementedError`.
"""

from __future__ import annotations

import ctypes
import platform
import sys

from fivesafes_tes.egress.checks._kernel import checked, libc, no_new_privs

# arch: (AUDIT_ARCH, seccomp syscall, socket, io_uring_setup)
_ARCHES = {
    "x86_64": (0xC000003E, 317, 41, 425),
    "aarch64": (0xC00000B7, 277, 198, 425),
}
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_ALLOW, _EPERM = 0x7FFF0000, 0x00050000 | 1
_X32_BIT = 0x40000000
_SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_TSYNC = 1, 1


class _Instruction(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Instruction))]


def program(machine: str) -> list[tuple[int, int, int, int]]:
    """The filter for `machine` as (code, jt, jf, k) instructions."""
    arch, _, socket, io_uring_setup = _ARCHES[machine]
    return [
        (_LD_W_ABS, 0, 0, 4),  # 0: seccomp_data.arch
        (_JEQ_K, 1, 0, arch),  # 1: this ABI: on to 3
        (_RET_K, 0, 0, _EPERM),  # 2: any other ABI: refused
        (_LD_W_ABS, 0, 0, 0),  # 3: seccomp_data.nr
        (_JGE_K, 3, 0, _X32_BIT),  # 4: x32 calls: refused (8)
        (_JEQ_K, 2, 0, socket),  # 5: refused (8)
        (_JEQ_K, 1, 0, io_uring_setup),  # 6: refused (8)
        (_RET_K, 0, 0, _ALLOW),  # 7
        (_RET_K, 0, 0, _EPERM),  # 8
    ]


def deny_network() -> None:
    """Install the filter on this process; raises OSError or NotImplementedError if it cannot."""
    machine = platform.machine()
    if sys.platform != "linux" or machine not in _ARCHES:
        raise NotImplementedError(f"no seccomp filter for {sys.platform} on {machine}")
    instructions = program(machine)
    array = (_Instruction * len(instructions))(*(_Instruction(*i) for i in instructions))
    prog = _Program(len(instructions), array)
    no_new_privs()
    seccomp = _ARCHES[machine][1]
    checked(
        libc().syscall(seccomp, _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_TSYNC, ctypes.byref(prog)),
        "seccomp(SECCOMP_SET_MODE_FILTER)",
    )
