"""Check processes read only what they judge: a Landlock ruleset under which a check process may read
the held files it was given and the code it runs, and write, create or remove nothing anywhere.

Rules parse files that tasks wrote. Should a file exploit a parser, the process it runs in (the
agent's own user) can then neither read the agent's database, token file or other children's
outputs, nor tamper with any file, for instance to mark its own outputs approved. Where the kernel
offers it (Landlock ABI 6), the process also cannot signal processes outside its domain, such as
the agent, nor reach abstract Unix sockets; Landlock always bars it from tracing them. Files already
open (the pipe to the agent, /dev/null as stdout) keep working.

Landlock is unprivileged (Linux 5.13 and later, enabled in Debian's and most distributions'
kernels); `restrict_self` confines only the calling thread and the threads it starts later, so it
is applied while the check process still has one thread, and refused otherwise.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
import sysconfig
import threading
from collections.abc import Iterable
from pathlib import Path

from fivesafes_tes.egress.checks._kernel import checked, libc, no_new_privs

# The syscall numbers are the same on every architecture (the generic table).
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_ALL_V1 = (1 << 13) - 1  # execute ... make_sym: every filesystem right of ABI 1
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | _TRUNCATE | _IOCTL_DEV  # what a rule on a file may grant

# Read-only, beyond the code's own folders: shared libraries, the time zone database, the process's
# own /proc entries and the system's description (CPU count, cgroup limits), and harmless devices.
_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/proc", "/sys")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/dev/urandom", "/dev/zero")


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi_version() -> int:
    """The kernel's Landlock ABI version; OSError where Landlock is missing or disabled."""
    if sys.platform != "linux":
        raise OSError(0, f"Landlock is a Linux feature, not available on {sys.platform}")
    version = libc().syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return checked(version, "Landlock (landlock_create_ruleset)")


def code_paths() -> tuple[list[Path], list[Path]]:
    """(folders, files) code is loaded from: the standard library and site-packages, and the folder
    of each top-level package already imported (an editable install's package folder, not the
    checkout around it), so that a lazy import inside them still works. Never `sys.path` as such:
    multiprocessing puts the agent's starting folder there, which may be its data folder."""
    folders = {
        Path(p) for key in ("stdlib", "platstdlib", "purelib", "platlib") if (p := sysconfig.get_path(key))
    }
    # the interpreter's own shared libraries (libffi, liblzma... where Python brings its own: conda)
    folders.update(Path(p) for p in (sysconfig.get_config_var("LIBDIR"), Path(sys.base_prefix, "lib")) if p)
    files: set[Path] = set()
    for name, module in list(sys.modules.items()):
        if "." in name or name in ("__main__", "__mp_main__"):
            continue
        for place in getattr(module, "__path__", None) or ():  # a package: its folder(s)
            folders.add(Path(place))
        if getattr(module, "__path__", None) is None and (file := getattr(module, "__file__", None)):
            files.add(Path(file))  # a top-level module outside a package
    return sorted(folders), sorted(files)


def confine(readable_files: Iterable[Path]) -> None:
    """Confine this process, for good: read `readable_files` (regular files only, not followed
    through a link), the code already imported and the system's libraries; write nothing. Import
    what the process will run first. Raises OSError if the kernel cannot, and RuntimeError when
    more than one thread runs (the others would stay free)."""
    if threading.active_count() != 1 or len(list(Path("/proc/self/task").iterdir())) != 1:
        raise RuntimeError("a process with several threads cannot be confined as a whole")
    abi = abi_version()
    handled = _ALL_V1 | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0)
    handled |= _IOCTL_DEV if abi >= 5 else 0
    attr = _RulesetAttr(handled, 0, _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24  # the attribute's fields this ABI knows
    ruleset = checked(
        libc().syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0),
        "landlock_create_ruleset",
    )
    try:
        read = READ_FILE | READ_DIR | EXECUTE
        code_folders, code_files = code_paths()
        for folder in [*code_folders, *map(Path, _SYSTEM_DIRS)]:
            _allow(ruleset, folder, read & handled)
        for file in [*code_files, *map(Path, _SYSTEM_FILES)]:
            _allow(ruleset, file, READ_FILE & handled)
        for file in readable_files:  # what tasks wrote: exactly these regular files, never a link's target
            _allow(ruleset, file, READ_FILE & handled, regular_only=True)
        _allow(ruleset, Path(os.devnull), (READ_FILE | WRITE_FILE) & handled)
        no_new_privs()
        checked(libc().syscall(_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def _allow(ruleset: int, path: Path, rights: int, *, regular_only: bool = False) -> None:
    flags = os.O_PATH | os.O_CLOEXEC | (os.O_NOFOLLOW if regular_only else 0)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing there to read (a /lib32 on a 64-bit-only system, say)
    try:
        mode = os.fstat(fd).st_mode
        if regular_only and not stat.S_ISREG(mode):
            return  # a link or a folder where a held file was: grant nothing through it
        if not stat.S_ISDIR(mode):
            rights &= _FILE_RIGHTS
        beneath = _PathBeneath(rights, fd)
        checked(
            libc().syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(beneath), 0),
            f"landlock_add_rule for {path}",
        )
    finally:
        os.close(fd)
