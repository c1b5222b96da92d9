"""The sandbox every analysis container gets, as data, and the checks that prove it was applied.

Backends translate `POLICY` into their engine's terms (Docker host config now, a Kubernetes pod
securityContext later). `validate_run_spec` refuses specs that would weaken it before anything is
created; `check_container_config` inspects what the engine actually made (RELIABILITY 16, 18), so a
daemon default or a backend bug cannot silently hand a task a privilege.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fivesafes_tes.tes.admission import ReservedPath

from .base import RequestRefused, RunSpec, Step


@dataclass(frozen=True)
class SandboxPolicy:
    network: str = "none"
    drop_capabilities: tuple[str, ...] = ("ALL",)
    no_new_privileges: bool = True
    read_only_root: bool = True
    writable_tmp: str = "/tmp"  # a tmpfs sized limits.disk_bytes; outputs are the only other writable paths
    ipc: str = "private"
    # Where our own tools (the static busybox used as deadline wrapper) appear in the container.
    tools_dir: str = "/.fivesafes"
    # Captured stdout/stderr kept by the engine per step; older output is rotated away beyond this.
    log_max_bytes: int = 32 << 20
    # Variables we set in every container; users may not set these nor anything with the prefix.
    reserved_env_prefix: str = "FIVESAFES_"
    # Defaults a step's env may override: a non-root user in a read-only image has no writable home.
    default_env: tuple[tuple[str, str], ...] = (("HOME", "/tmp"), ("TMPDIR", "/tmp"))
    # Host paths that must never be mounted into a task (engine sockets, host state, kernel interfaces).
    forbidden_sources: tuple[str, ...] = (
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/var/run",
        "/var/lib/docker",
        "/var/lib/containerd",
        "/var/lib/kubelet",
        "/etc",
        "/boot",
        "/root",
    )
    # Container paths no mount may be at or below: the kernel's interfaces the engine provides. Our
    # tools_dir is reserved the same way, and writable_tmp itself (a mount may go below it: the engine
    # mounts parents before children).
    kernel_targets: tuple[str, ...] = ("/proc", "/sys", "/dev")

    def own_paths(self) -> tuple[ReservedPath, ...]:
        """The container paths the sandbox itself occupies."""
        return (
            *(ReservedPath(path=t, below=True, why="the kernel's interfaces") for t in self.kernel_targets),
            ReservedPath(path=self.tools_dir, below=True, why="the sandbox's own tools"),
            ReservedPath(
                path=self.writable_tmp,
                below=False,
                why="the task's scratch space (paths below it may be inputs and outputs)",
            ),
        )


POLICY = SandboxPolicy()

_USER = re.compile(r"^([0-9]+):([0-9]+)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UNSAFE_SECURITY_OPTS = ("unconfined", "label=disable", "label:disable")


class SandboxViolation(AssertionError):
    """A container configuration breaks the sandbox; the message lists every rule broken."""


def _under(path: str, roots: tuple[str, ...]) -> bool:
    p = PurePosixPath(path)
    return any(p == PurePosixPath(r) or PurePosixPath(r) in p.parents for r in roots)


def parse_user(user: str) -> tuple[int, int]:
    """uid, gid from "uid:gid". Numeric only: a name is resolved inside the image, which could map it to 0."""
    m = _USER.match(user)
    if not m:
        raise ValueError(f"user {user!r} must be numeric 'uid:gid' (for example '65534:65534')")
    uid, gid = int(m.group(1)), int(m.group(2))
    if uid == 0 or gid == 0:
        raise ValueError(f"user {user!r} is root; tasks run as a non-root uid and gid")
    return uid, gid


def mount_source_refusal(path: Path, policy: SandboxPolicy = POLICY) -> str | None:
    """Why host path `path` may never be mounted into a task (host state, engine sockets), or None."""
    source = path.resolve()
    if not source.is_absolute() or str(source) == "/" or _under(str(source), policy.forbidden_sources):
        return (
            f"host path {str(path)!r} may not be mounted into a task: it is (under) one of "
            f"{', '.join(policy.forbidden_sources)} or /"
        )
    return None


def validate_run_spec(spec: RunSpec, policy: SandboxPolicy = POLICY) -> None:
    """Refuse a spec that would weaken the sandbox, naming what to fix: RequestRefused where the task's
    request is the cause, ValueError where the TRE's own configuration is (a user, a limit, a host path)."""
    parse_user(spec.user)
    if not spec.steps:
        raise RequestRefused("a run needs at least one step")
    lim = spec.limits
    if (
        lim.cpu_cores <= 0
        or lim.memory_bytes <= 0
        or lim.disk_bytes <= 0
        or lim.runtime_s <= 0
        or lim.pids <= 0
    ):
        raise ValueError(f"every limit must be positive: {lim}")
    targets: set[str] = set()
    writable = [PurePosixPath(w) for w in spec.writable]
    placed = [
        *spec.writable,
        *(d.target for d in spec.datasets),
        # An input inside a writable folder is a file in it, not a mount of its own.
        *(i.target for i in spec.inputs if not any(w in PurePosixPath(i.target).parents for w in writable)),
    ]
    for place in placed:
        target = PurePosixPath(place)
        if not target.is_absolute() or ".." in target.parts or str(target) == "/":
            raise RequestRefused(f"mount target {place!r} must be an absolute container path below /")
        reserved = next((r for r in policy.own_paths() if r.covers(str(target))), None)
        if reserved is not None:
            raise RequestRefused(f"mount target {place!r} is reserved by the sandbox: {reserved.why}")
        if str(target) in targets:
            raise RequestRefused(f"mount target {place!r} is used twice")
        targets.add(str(target))
    for i, step in enumerate(spec.steps):
        if not step.command:
            raise RequestRefused(f"step {i} has an empty command")
        for what, path in (("stdin", step.stdin), ("stdout", step.stdout), ("stderr", step.stderr)):
            if path is not None and not PurePosixPath(path).is_absolute():
                raise RequestRefused(f"step {i} {what} {path!r} must be an absolute container path")
        for name, value in step.env.items():
            if not _ENV_NAME.match(name):
                raise RequestRefused(f"step {i} env name {name!r} is not a valid variable name")
            if name.startswith(policy.reserved_env_prefix):
                raise RequestRefused(
                    f"step {i} env {name!r} is reserved (names starting {policy.reserved_env_prefix})"
                )
            if "\0" in value:
                raise RequestRefused(f"step {i} env {name!r} contains a NUL byte")


def check_host_sources(sources: list[tuple[Path, str]], policy: SandboxPolicy = POLICY) -> None:
    """Refuse a host folder (source, container target) that must never be mounted or is missing:
    ValueError, for the TRE's configuration is the cause (a dataset's path, the work directory)."""
    for source, target in sources:
        refusal = mount_source_refusal(source, policy)
        if refusal:
            raise ValueError(refusal)
        if not source.resolve().exists():
            raise ValueError(f"host path {str(source)!r} to mount at {target} does not exist")


def step_env(env: dict[str, str], reserved: dict[str, str], policy: SandboxPolicy = POLICY) -> dict[str, str]:
    """The whole environment of a step: defaults, then the user's, then ours (which always win)."""
    return {**dict(policy.default_env), **env, **reserved}


# The last stderr line of a step in which the kernel's OOM killer struck. The engine's own flag
# (Docker's State.OOMKilled) races the exit and is lost under load, so PID 1 reads the cgroup's
# oom_kill counter itself: with only shell builtins, as a fork bomb may have used every pid.
OOM_NOTICE = "fivesafes: out of memory: a process of this step was killed at the memory limit"

# PID 1 of every step. A static busybox from the host (mounted read-only at tools_dir) runs it, so
# the deadline holds whatever the image contains and whether or not the agent is alive. The step
# runs under `timeout -s KILL` as a child: the kernel ignores SIGKILL sent to PID 1 from inside its
# own namespace, and when PID 1 exits every process left in the container dies with it.
# Arguments: step script, deadline (epoch s), stdin, stdout, stderr (paths or ""), command...
_PID1 = r"""B="$0"
job=$1 deadline=$2
shift 2
left=$(( deadline - $("$B" date +%s) ))
if [ "$left" -le 0 ]; then
  printf '%s\n' "fivesafes: the task's time limit was reached before this step started" >&2
  exit 124
fi
"$B" timeout -s KILL "$left" "$B" sh -c "$job" "$B" "$@" &
wait $!
rc=$?
for f in /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control; do
  [ -r "$f" ] || continue
  while read -r key value; do
    if [ "$key" = oom_kill ] && [ "$value" != 0 ]; then printf '%s\n' "@OOM_NOTICE@" >&2; fi
  done <"$f"
done
exit $rc
""".replace("@OOM_NOTICE@", OOM_NOTICE)

# The step itself: honours stdin/stdout/stderr paths (tee keeps the engine's log stream complete)
# and execs the user's command as argv, never through a shell string. Debian's busybox prefers its
# own applets to PATH, so the command is looked up in PATH here and exec'd by its path.
_STEP = r"""B="$0"
in=$1 out=$2 err=$3 name=$4
shift 4
case $name in
*/*) path=$name ;;
*)
  path=
  set -f
  IFS=:
  for dir in $PATH; do
    if [ -f "${dir:-.}/$name" ] && [ -x "${dir:-.}/$name" ]; then path=${dir:-.}/$name; break; fi
  done
  unset IFS
  set +f
  ;;
esac
if [ -z "$path" ]; then
  printf '%s\n' "fivesafes: $name: command not found" >&2
  exit 127
fi
if [ -n "$in" ]; then exec <"$in"; fi
run() { exec -a "$name" "$path" "$@"; }
set -o pipefail
if [ -n "$out" ] && [ -n "$err" ]; then
  { run "$@" 2>&1 >&3 3>&- | "$B" tee "$err" >&2 3>&-; } 3>&1 | "$B" tee "$out"
elif [ -n "$out" ]; then
  run "$@" | "$B" tee "$out"
elif [ -n "$err" ]; then
  { run "$@" 2>&1 >&3 3>&- | "$B" tee "$err" >&2 3>&-; } 3>&1
else
  run "$@"
fi
"""


def step_argv(step: Step, deadline: int, policy: SandboxPolicy = POLICY) -> tuple[list[str], list[str]]:
    """Entrypoint and arguments of a step's container: the deadline wrapper around its command."""
    busybox = f"{policy.tools_dir}/busybox"
    args = ["sh", "-c", _PID1, busybox, _STEP, str(deadline)]
    args += [step.stdin or "", step.stdout or "", step.stderr or "", *step.command]
    return [busybox], args


def _check_mount_source(source: str, target: str, policy: SandboxPolicy) -> list[str]:
    problems = []
    if source == "/" or _under(source, policy.forbidden_sources) or source.endswith(".sock"):
        problems.append(f"host path {source} is mounted at {target}")
    if _under(target, policy.kernel_targets):
        problems.append(f"a mount covers kernel interface {target}")
    return problems


def violations(inspect: dict[str, Any], policy: SandboxPolicy = POLICY) -> list[str]:
    """Every sandbox rule a container (as `docker inspect` reports it) breaks; empty when it is sound."""
    host = inspect.get("HostConfig") or {}
    config = inspect.get("Config") or {}
    out: list[str] = []

    if host.get("Privileged"):
        out.append("privileged")
    if host.get("CapAdd"):
        out.append(f"capabilities added: {host['CapAdd']}")
    if not set(policy.drop_capabilities) <= set(host.get("CapDrop") or []):
        out.append(f"capabilities not dropped: CapDrop={host.get('CapDrop')}")
    security = host.get("SecurityOpt") or []
    if policy.no_new_privileges and not any(
        o in ("no-new-privileges", "no-new-privileges:true") for o in security
    ):
        out.append("no-new-privileges not set")
    out += [f"security option {o}" for o in security if any(u in o for u in _UNSAFE_SECURITY_OPTS)]
    if host.get("NetworkMode") != policy.network:
        out.append(f"network mode {host.get('NetworkMode')!r}, not {policy.network!r}")
    for key in ("PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode"):
        mode = host.get(key) or ""
        if mode == "host" or mode.startswith("container:"):
            out.append(f"{key} shares a namespace: {mode}")
    if host.get("IpcMode") not in (policy.ipc, "none"):
        out.append(f"IpcMode {host.get('IpcMode')!r}, not {policy.ipc!r}")
    for key in ("Devices", "DeviceCgroupRules", "DeviceRequests", "VolumesFrom", "Links", "Sysctls"):
        if host.get(key):
            out.append(f"{key} set: {host[key]}")
    if policy.read_only_root and not host.get("ReadonlyRootfs"):
        out.append("root filesystem is writable")
    if set(host.get("Tmpfs") or {}) - {policy.writable_tmp}:
        out.append(f"tmpfs other than {policy.writable_tmp}: {sorted(host['Tmpfs'])}")
    if (host.get("RestartPolicy") or {}).get("Name") not in (None, "", "no"):
        out.append(f"restart policy {host['RestartPolicy']}")
    if host.get("OomKillDisable"):
        out.append("OOM killer disabled")

    if not (host.get("Memory") or 0) > 0:
        out.append("no memory limit")
    elif host.get("MemorySwap") != host.get("Memory"):
        out.append(f"swap allowed: MemorySwap={host.get('MemorySwap')} Memory={host.get('Memory')}")
    if not ((host.get("NanoCpus") or 0) > 0 or (host.get("CpuQuota") or 0) > 0):
        out.append("no CPU limit")
    if not (host.get("PidsLimit") or 0) > 0:
        out.append("no process limit")
    if not (host.get("LogConfig") or {}).get("Config", {}).get("max-size"):
        out.append("captured logs are unbounded")

    user = config.get("User") or ""
    try:
        parse_user(user)
    except ValueError as exc:
        out.append(str(exc))

    for bind in host.get("Binds") or []:
        source, _, rest = bind.partition(":")
        out += _check_mount_source(source, rest.split(":")[0], policy)
    for mount in inspect.get("Mounts") or []:
        if mount.get("Type") == "bind":
            out += _check_mount_source(mount.get("Source", ""), mount.get("Destination", ""), policy)
        elif mount.get("Type") not in ("tmpfs",):
            out.append(f"{mount.get('Type')} mount at {mount.get('Destination')}")
    for mount in host.get("Mounts") or []:
        if mount.get("Type") == "bind":
            out += _check_mount_source(mount.get("Source", ""), mount.get("Target", ""), policy)
        else:
            out.append(f"{mount.get('Type')} mount at {mount.get('Target')}")
    return out


def check_container_config(inspect: dict[str, Any], policy: SandboxPolicy = POLICY) -> None:
    """Raise SandboxViolation listing every broken rule of a container's `docker inspect` output."""
    problems = violations(inspect, policy)
    if problems:
        name = inspect.get("Name") or inspect.get("Id", "?")
        raise SandboxViolation(f"container {name} breaks the sandbox: " + "; ".join(problems))
