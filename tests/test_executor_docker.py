"""The Docker executor against a real engine: steps, failures, the sandbox (RELIABILITY 15-18, 20),
deadlines without an agent (11), cancel (13), sweep (12) and re-attach after a crash (10).

Every container a test makes is inspected at teardown with `check_container_config` (18).
Needs `scripts/services.sh --with-docker`; skips locally without an engine, fails under CI=true.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import http.server
import itertools
import os
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from fivesafes_tes.executors import (
    LABEL_CHILD,
    LABEL_DEPLOYMENT,
    LABEL_STEP,
    LABEL_TRE,
    DatasetMount,
    ExecutorError,
    Limits,
    Outcome,
    RunResult,
    RunSpec,
    Step,
)
from fivesafes_tes.executors.docker import _time as docker_time
from fivesafes_tes.executors.hostdirs import Workspace, lay_out
from fivesafes_tes.executors.sandbox import (
    OOM_NOTICE,
    SandboxViolation,
    check_container_config,
    validate_run_spec,
    violations,
)
from tests import images

docker_client = images.docker_client
busybox_image = images.busybox_image

NOBODY = 65534
SMALL = Limits(cpu_cores=0.5, memory_bytes=64 << 20, disk_bytes=8 << 20, runtime_s=30, pids=64)


class Harness:
    """Executors on per-test TREs, specs with fresh child ids, and a poll loop."""

    def __init__(self, client, image: str, tmp_path: Path) -> None:
        self.client, self.image, self.tmp = client, image, tmp_path
        self.tres: list[str] = []
        self.datasets: dict[str, Path] = {}
        self.work = tmp_path / "work"
        self.tre = self.new_tre()
        self.deployment = f"test-{uuid.uuid4().hex}"
        self.ex = self.executor()

    def new_tre(self) -> str:
        tre = f"test-{uuid.uuid4().hex[:8]}"
        self.tres.append(tre)
        return tre

    def executor(self, tre: str | None = None, deployment: str | None = None):
        from fivesafes_tes.executors.docker import DockerExecutor

        return DockerExecutor(
            tre or self.tre,
            deployment=deployment or self.deployment,
            work_dir=self.work,
            datasets=self.datasets,
            client=self.client,
        )

    def dataset(self, name: str) -> Path:
        """A folder of the TRE's, given to tasks read-only as dataset `name`."""
        self.datasets[name] = self.dir(name)
        self.ex = self.executor()
        return self.datasets[name]

    def out(self, spec: RunSpec, target: str) -> Path:
        """The host folder standing for a writable container folder of the run."""
        return Workspace(self.work / spec.child_id).host_dir(target)

    def logs(self, spec: RunSpec) -> Path:
        return Workspace(self.work / spec.child_id).logs

    def log(self, spec: RunSpec, step: int, stream: str = "stdout") -> str:
        """A step's captured log, as `collect` hands it over (from a fresh executor: it keeps no state)."""
        collected = self.executor().collect(spec.child_id, self.tmp / "scratch")
        path = collected.logs.get((step, stream))
        return path.read_text() if path is not None else ""

    def dir(self, name: str, *, writable: bool = False) -> Path:
        path = self.tmp / name
        path.mkdir(exist_ok=True)
        if writable:
            os.chown(path, NOBODY, NOBODY)  # the agent stages output dirs for the task's uid
        return path

    def spec(self, *commands: list[str] | Step, tre: str | None = None, **kwargs) -> RunSpec:
        steps = [c if isinstance(c, Step) else Step(image=self.image, command=c) for c in commands]
        child = f"c{uuid.uuid4().hex[:12]}"
        defaults = {"limits": SMALL}
        return RunSpec(child_id=child, attempt=1, tre=tre or self.tre, steps=steps, **{**defaults, **kwargs})

    def wait(self, child: str, ex=None, timeout: float = 30) -> RunResult:
        ex = ex or self.ex
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            result = ex.poll(child)
            if result is not None:
                return result
            time.sleep(0.1)
        raise AssertionError(f"run {child} did not end within {timeout} s")

    def run(self, spec: RunSpec, timeout: float = 30) -> RunResult:
        self.ex.start(spec)
        return self.wait(spec.child_id, timeout=timeout)

    def containers(self, child: str | None = None, tre: str | None = None) -> list:  # type: ignore[type-arg]
        labels = [f"{LABEL_TRE}={tre or self.tre}"] + ([f"{LABEL_CHILD}={child}"] if child else [])
        return self.client.containers.list(all=True, filters={"label": labels})

    def wait_started(self, child: str, timeout: float = 10) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(c.status in ("running", "exited") for c in self.containers(child)):
                return
            time.sleep(0.1)
        raise AssertionError(f"run {child} never started")


@pytest.fixture
def h(docker_client, busybox_image, tmp_path) -> Iterator[Harness]:
    harness = Harness(docker_client, busybox_image, tmp_path)
    yield harness
    made = [c for tre in harness.tres for c in harness.containers(tre=tre)]
    try:
        for container in made:  # RELIABILITY 18: no escape vector in anything we created
            check_container_config(container.attrs)
    finally:
        for container in made:
            container.remove(force=True)


def text(path: Path) -> str:
    return path.read_text()


# --- steps, logs, exit codes -----------------------------------------------------------------


def test_two_steps_share_an_output_mount_and_logs_are_captured(h: Harness) -> None:
    data = h.dataset("in")
    (data / "rows.txt").write_text("a\nb\nc\n")
    spec = h.spec(
        ["sh", "-c", "wc -l < /in/rows.txt > /out/count; echo step-one; echo warn >&2"],
        Step(
            image=h.image, command=["cat", "/out/count", "-"], stdin="/in/rows.txt", stdout="/out/report.txt"
        ),
        Step(
            image=h.image,
            command=["sh", "-c", "echo oops >&2; echo fine"],
            stderr="/out/err.txt",
            workdir="/out",
        ),
        datasets=[DatasetMount("in", "/in")],
        writable=["/out"],
    )
    result = h.run(spec)

    assert result.outcome is Outcome.SUCCEEDED, result.message
    assert [s.exit_code for s in result.steps] == [0, 0, 0]
    logs, out = h.logs(spec), h.out(spec, "/out")
    assert [text(logs / f"step-0.{s}") for s in ("stdout", "stderr")] == ["step-one\n", "warn\n"]
    assert text(logs / "step-1.stdout") == "3\na\nb\nc\n" == text(out / "report.txt")
    assert text(logs / "step-2.stderr") == "oops\n" == text(out / "err.txt")
    assert text(logs / "step-2.stdout") == "fine\n"
    for step in result.steps:
        assert step.start_time.endswith("Z")
        assert step.start_time <= step.end_time
    assert not list(logs.glob("*.part"))
    # polling an ended run again gives the same answer and rewrites nothing
    assert h.ex.poll(spec.child_id) == result
    collected = h.ex.collect(spec.child_id, h.tmp / "scratch")
    assert {path: text(local) for path, local in collected.files.items()} == {
        "/out/count": "3\n",
        "/out/report.txt": "3\na\nb\nc\n",
        "/out/err.txt": "oops\n",
    }
    assert sorted(collected.logs) == [(i, stream) for i in range(3) for stream in ("stderr", "stdout")]


def test_a_failing_step_stops_the_run(h: Harness) -> None:
    spec = h.spec(["sh", "-c", "echo before; exit 3"], ["echo", "never"])
    result = h.run(spec)
    assert result.outcome is Outcome.FAILED
    assert "step 1 of 2 exited with code 3" in result.message
    assert [s.exit_code for s in result.steps] == [3]
    assert [c.name for c in h.containers(spec.child_id)] == [f"fst-{spec.child_id}-1-0"]  # step 2 never made


def test_ignore_error_continues_and_a_missing_command_is_reported(h: Harness) -> None:
    spec = h.spec(
        Step(image=h.image, command=["no-such-program"], ignore_error=True),
        Step(image=h.image, command=["sh", "-c", "exit 4"], ignore_error=True),
        ["echo", "ran"],
    )
    result = h.run(spec)
    assert result.outcome is Outcome.SUCCEEDED, result.message
    assert [s.exit_code for s in result.steps] == [127, 4, 0]
    assert "no-such-program: command not found" in h.log(spec, 0, "stderr")
    assert h.log(spec, 2) == "ran\n"

    failed = h.run(h.spec(["no-such-program"]))
    assert failed.outcome is Outcome.FAILED
    assert "command not found" in failed.message


# --- RELIABILITY 15: no network --------------------------------------------------------------


class _Hello(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        body = b"reached-the-host"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def loopback_server() -> Iterator[tuple[int, type[_Hello]]]:
    handler = type("Hello", (_Hello,), {"hits": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # loopback only, never elsewhere
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def test_no_network_after_a_positive_control(h: Harness, loopback_server) -> None:
    port, handler = loopback_server
    probes = (
        f"wget -q -O - http://127.0.0.1:{port}/ && echo tcp=reached || echo tcp=blocked\n"
        f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 {port} | grep -q '200 OK' && echo nc=reached || "
        f"echo nc=blocked\n"
        "nslookup example.org && echo dns=reached || echo dns=blocked\n"
        "wget -q -O - http://169.254.169.254/latest/meta-data/ && echo meta=reached || echo meta=blocked\n"
        "echo interfaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ,)\n"
    )
    # Positive control: the same probes, same image, on the host's network reach the server.
    control = h.client.containers.run(
        h.image, ["sh", "-c", probes], network_mode="host", remove=True
    ).decode()
    assert "tcp=reached" in control, control
    assert "nc=reached" in control, control
    assert handler.hits == 2

    h.run(spec := h.spec(["sh", "-c", probes]))
    out, err = h.log(spec, 0), h.log(spec, 0, "stderr")
    for probe in ("tcp", "nc", "dns", "meta"):
        assert f"{probe}=blocked" in out, out
    assert "interfaces=lo," in out, out
    # refused by the container's own loopback, or no route at all: not a crash, not a timeout
    assert err.count("Connection refused") == 2, err
    assert err.count("Network is unreachable") == 2, err
    assert handler.hits == 2, "the sandboxed run must not reach the host's server"


# --- RELIABILITY 16: least privilege ---------------------------------------------------------


def test_least_privilege_inside_the_container(h: Harness) -> None:
    data = h.dataset("in")
    (data / "f").write_text("x")
    script = (
        "echo uid=$(id -u) gid=$(id -g)\n"
        "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\\t'\n"
        "for p in /probe /tmp/probe /out/probe /in/probe /in/f /bin/probe; do\n"
        '  if touch "$p" 2>/dev/null; then echo "$p=writable"; else echo "$p=denied"; fi\n'
        "done\n"
    )
    spec = h.spec(["sh", "-c", script], datasets=[DatasetMount("in", "/in")], writable=["/out"])
    h.run(spec)
    lines = set(h.log(spec, 0).split())
    out = h.out(spec, "/out")
    expected = {
        "uid=65534",
        "gid=65534",
        "CapEff:0000000000000000",
        "CapBnd:0000000000000000",
        "NoNewPrivs:1",
        "Seccomp:2",
        "/probe=denied",
        "/bin/probe=denied",
        "/tmp/probe=writable",
        "/out/probe=writable",
        "/in/probe=denied",
        "/in/f=denied",
    }
    assert expected <= lines, sorted(lines)
    assert (out / "probe").exists()
    assert not (data / "probe").exists()


def test_the_sandbox_refuses_unsafe_specs(h: Harness) -> None:
    h.datasets["sock"] = Path("/var/run")  # a TRE misconfigured: a dataset where the engine's socket is
    h.ex = h.executor()
    for bad, why in [
        ({"user": "0:0"}, "root"),
        ({"user": "root"}, "numeric"),
        ({"user": "1000:0"}, "root"),
        ({"datasets": [DatasetMount("sock", "/sock")]}, "may not be mounted"),
        ({"datasets": [DatasetMount("x", "/proc/x")]}, "reserved"),
        ({"writable": ["/proc/x"]}, "reserved"),
        ({"writable": ["relative"]}, "absolute"),
        ({"datasets": [DatasetMount("unknown", "/u")]}, "no host path"),
    ]:
        with pytest.raises(ValueError, match=why):
            h.ex.start(h.spec(["true"], **bad))
    with pytest.raises(ValueError, match="reserved"):
        h.ex.start(h.spec(Step(image=h.image, command=["true"], env={"FIVESAFES_DEADLINE": "9999999999"})))
    with pytest.raises(ValueError, match="TRE"):
        h.ex.start(h.spec(["true"], tre="another-tre"))
    assert h.containers() == []


# --- RELIABILITY 17: resource abuse ----------------------------------------------------------


def _pids_cgroup(container_id: str) -> tuple[int, str, int] | None:
    """The container's process count, process cap and forks refused at the cap, read from its
    cgroup (cgroupfs v1, v2, or the systemd driver); None where no cgroup of it is readable."""
    for path in (
        f"/sys/fs/cgroup/pids/docker/{container_id}",
        f"/sys/fs/cgroup/docker/{container_id}",
        f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope",
    ):
        try:
            current = int(Path(path, "pids.current").read_text())
            cap = Path(path, "pids.max").read_text().strip()  # "max" where there is no cap
            events = dict(line.split() for line in Path(path, "pids.events").read_text().splitlines())
            return current, cap, int(events["max"])
        except (OSError, ValueError, KeyError):
            continue
    return None


def test_memory_hog_fork_bomb_cpu_spinner_and_disk_filler_are_contained(
    h: Harness,
    loopback_server,
) -> None:
    port, _ = loopback_server
    short = Limits(cpu_cores=0.5, memory_bytes=32 << 20, disk_bytes=8 << 20, runtime_s=4, pids=32)
    # The bomb gets room in memory so that the process cap, not the memory limit, is what stops it:
    # where the kernel charges each process's stack and tables to the container, 32 MiB ran out at
    # 15 processes (seen in CI), and the cap would go untested.
    bomb = dataclasses.replace(short, memory_bytes=256 << 20, pids=16)
    specs = {
        "memory": h.spec(["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"], limits=short),
        "forks": h.spec(["sh", "-c", "b() { b & b & sleep 30; }; b & while :; do :; done"], limits=bomb),
        "cpu": h.spec(["sh", "-c", "while :; do :; done"], limits=short),
        "disk": h.spec(["dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=64"], limits=short),
    }
    for spec in specs.values():
        h.ex.start(spec)

    # While they run, the host (and a server on it, standing in for the gateway) stays responsive.
    slowest, pids_seen, results, caps = 0.0, [], {}, set()
    end = time.monotonic() + 30
    while len(results) < len(specs) and time.monotonic() < end:
        t0 = time.monotonic()
        subprocess.run(["true"], check=True)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read() == b"reached-the-host"
        slowest = max(slowest, time.monotonic() - t0)
        for c in h.containers(specs["forks"].child_id):
            caps.add(c.attrs["HostConfig"]["PidsLimit"])
            if (seen := _pids_cgroup(c.id)) is not None:
                pids_seen.append(seen)
        for name, spec in specs.items():
            if name not in results and (r := h.ex.poll(spec.child_id)) is not None:
                results[name] = r
        time.sleep(0.2)

    assert results["memory"].outcome is Outcome.OUT_OF_MEMORY, results["memory"]
    assert "ran out of memory (limit 32 MiB)" in results["memory"].message
    assert h.log(specs["memory"], 0, "stderr").endswith(OOM_NOTICE + "\n")  # seen from inside too
    assert results["forks"].outcome is Outcome.TIMED_OUT, results["forks"]
    bomb_stderr = h.log(specs["forks"], 0, "stderr")
    assert "can't fork" in bomb_stderr
    assert caps == {bomb.pids}, caps  # asked of the engine, always
    if pids_seen:  # where the cgroup is readable: the cap was set, refused forks, and never passed
        # (A sampled count alone says little: the bomb's shells die when a fork fails, so the
        # count peaks between samples and settles below the cap.)
        assert {cap for _, cap, _ in pids_seen} == {str(bomb.pids)}, pids_seen
        assert max(current for current, _, _ in pids_seen) <= bomb.pids, pids_seen
        assert max(refused for _, _, refused in pids_seen) > 0, (pids_seen, bomb_stderr[-300:])
    assert results["cpu"].outcome is Outcome.TIMED_OUT, results["cpu"]
    assert "time limit of 4 s" in results["cpu"].message
    assert results["disk"].outcome is Outcome.FAILED, results["disk"]
    assert "No space left on device" in h.log(specs["disk"], 0, "stderr")
    assert slowest < 5.0, f"the host took {slowest:.2f} s to answer while the tasks ran"


# --- RELIABILITY 11: the deadline holds without an agent -------------------------------------


def test_the_deadline_is_enforced_when_the_agent_is_dead(h: Harness) -> None:
    limits = Limits(runtime_s=2, memory_bytes=32 << 20, pids=16)
    stuck = h.spec(["sleep", "600"], ["echo", "never"], limits=limits)
    late = h.spec(["true"], ["echo", "too late"], limits=limits)
    for spec in (stuck, late):
        h.ex.start(spec)
        h.wait_started(spec.child_id)
    started = time.monotonic()
    del h.ex  # the agent is gone: nobody polls, nobody kills
    gc.collect()
    first = h.client.containers.get(f"fst-{stuck.child_id}-1-0")
    deadline = time.monotonic() + 10  # the limit is 2 s; nobody but the container itself acts here
    while first.status != "exited" and time.monotonic() < deadline:
        time.sleep(0.2)
        first.reload()
    assert first.status == "exited"
    assert first.attrs["State"]["ExitCode"] == 137
    state = first.attrs["State"]
    ran = docker_time(state["FinishedAt"]) - docker_time(state["StartedAt"])
    assert ran.total_seconds() < limits.runtime_s + 1.5, ran  # at its deadline, not whenever
    time.sleep(max(0.0, started + 3.5 - time.monotonic()))  # and both runs' deadlines have passed

    agent = h.executor()  # the agent is back
    result = h.wait(stuck.child_id, ex=agent)
    assert result.outcome is Outcome.TIMED_OUT, result
    assert len(result.steps) == 1
    assert "time limit of 2 s" in result.message
    # a step the returning agent starts after the deadline ends at once
    result = h.wait(late.child_id, ex=agent)
    assert result.outcome is Outcome.TIMED_OUT, result
    assert [s.exit_code for s in result.steps] == [0, 124]
    assert "time limit was reached before this step started" in h.log(late, 1, "stderr")


def test_later_steps_get_only_the_time_that_is_left(h: Harness) -> None:
    spec = h.spec(
        ["sleep", "2"], ["sleep", "600"], limits=Limits(runtime_s=4, memory_bytes=32 << 20, pids=16)
    )
    result = h.run(spec)
    assert result.outcome is Outcome.TIMED_OUT, result
    assert [s.exit_code for s in result.steps] == [0, 137]
    second = result.steps[1]
    ran = datetime.fromisoformat(second.end_time) - datetime.fromisoformat(second.start_time)
    assert ran.total_seconds() < 3.5  # what was left of 4 s after a 2 s step, not 4 s of its own


# --- RELIABILITY 13: cancel ------------------------------------------------------------------


def test_cancel_stops_a_running_step_within_seconds(h: Harness) -> None:
    spec = h.spec(["sh", "-c", "echo started; sleep 600"], ["echo", "never"])
    h.ex.start(spec)
    h.wait_started(spec.child_id)
    step = h.client.containers.get(f"fst-{spec.child_id}-1-0")
    deadline = time.monotonic() + 10
    while b"started" not in step.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    t0 = time.monotonic()
    canceled = h.ex.cancel(spec.child_id)
    result = h.wait(spec.child_id, timeout=10)
    assert time.monotonic() - t0 < 8  # cancel, kill and the poll that sees it, on a busy engine
    assert result.outcome is Outcome.CANCELED
    assert canceled == result  # cancel says how the run ended
    assert [s.exit_code for s in result.steps] == [137]
    assert h.log(spec, 0) == "started\n"  # logs kept

    assert h.ex.cancel(spec.child_id) == result  # again: a no-op
    assert h.executor().poll(spec.child_id) == result  # a restarted agent sees the same
    h.ex.start(spec)  # a late start of a canceled run does not revive it
    assert h.ex.poll(spec.child_id) == result
    names = {c.name for c in h.containers(spec.child_id)}
    assert names == {f"fst-{spec.child_id}-1-0", f"fst-{spec.child_id}-1-canceled"}  # step 2 never made


def test_cancel_of_an_ended_or_unknown_run_is_a_no_op(h: Harness) -> None:
    spec = h.spec(["echo", "done"])
    result = h.run(spec)
    assert result.outcome is Outcome.SUCCEEDED
    assert h.ex.cancel(spec.child_id) == result  # its outcome stands
    assert h.ex.cancel("never-started") is None
    assert h.ex.poll(spec.child_id) == result
    assert len(h.containers(spec.child_id)) == 1
    assert h.ex.poll("never-started").outcome is Outcome.LOST


# --- RELIABILITY 35: one step's container at a time ------------------------------------------


def test_a_steps_container_is_created_only_once_the_step_before_it_ended(h: Harness) -> None:
    gate = h.dataset("gate")
    spec = h.spec(
        ["sh", "-c", "until [ -e /gate/open ]; do sleep 0.1; done"],
        ["echo", "two"],
        ["echo", "three"],
        datasets=[DatasetMount("gate", "/gate")],
    )
    h.ex.start(spec)
    h.wait_started(spec.child_id)
    for _ in range(3):  # polls while step 1 runs create nothing
        assert h.ex.poll(spec.child_id) is None
    assert {c.labels[LABEL_STEP]: c.status for c in h.containers(spec.child_id)} == {"0": "running"}

    (gate / "open").touch()
    result = h.wait(spec.child_id)
    assert result.outcome is Outcome.SUCCEEDED, result.message
    assert [h.log(spec, i) for i in range(3)] == ["", "two\n", "three\n"]
    made = sorted(h.containers(spec.child_id), key=lambda c: int(c.labels[LABEL_STEP]))
    assert [c.labels[LABEL_STEP] for c in made] == ["0", "1", "2"]
    for before, after in itertools.pairwise(made):
        assert docker_time(after.attrs["Created"]) >= docker_time(before.attrs["State"]["FinishedAt"])


def test_a_step_removed_behind_the_agents_back_ends_the_run_lost_and_never_runs_again(h: Harness) -> None:
    spec = h.spec(["true"], ["sleep", "600"], ["echo", "never"])
    h.ex.start(spec)
    second = f"fst-{spec.child_id}-1-1"
    deadline = time.monotonic() + 20
    while second not in {c.name for c in h.containers(spec.child_id) if c.status == "running"}:
        assert h.ex.poll(spec.child_id) is None
        assert time.monotonic() < deadline
        time.sleep(0.1)
    h.client.containers.get(second).remove(force=True)
    result = h.ex.poll(spec.child_id)
    assert result is not None, result
    assert result.outcome is Outcome.LOST, result
    assert h.executor().poll(spec.child_id) == RunResult(
        Outcome.LOST, [], result.message
    )  # also after a restart
    assert {c.name for c in h.containers(spec.child_id)} == {f"fst-{spec.child_id}-1-0"}


# --- RELIABILITY 12 and 10: sweep, re-attach -------------------------------------------------


def test_sweep_removes_orphans_keeps_the_kept_and_other_tres(h: Harness) -> None:
    kept, orphan = h.spec(["sleep", "600"]), h.spec(["sleep", "600"])
    other_tre = h.new_tre()
    other_ex = h.executor(other_tre)
    foreign = h.spec(["sleep", "600"], tre=other_tre)
    for ex, spec in ((h.ex, kept), (h.ex, orphan), (other_ex, foreign)):
        ex.start(spec)

    assert h.ex.running() == {kept.child_id: 1, orphan.child_id: 1}
    assert h.ex.sweep({kept.child_id}) == [orphan.child_id]
    assert h.containers(orphan.child_id) == []
    assert h.ex.running() == {kept.child_id: 1}
    assert other_ex.running() == {foreign.child_id: 1}
    assert h.ex.sweep({kept.child_id}) == []  # idempotent

    h.ex.cleanup(kept.child_id)
    h.ex.cleanup(kept.child_id)
    assert h.containers(kept.child_id) == []
    assert h.ex.running() == {}


def test_two_deployments_with_the_same_tre_name_never_touch_each_others_runs(h: Harness) -> None:
    """Two dev stacks (or test sessions) on one engine both have a uk-tre: each agent sweeps, lists and
    re-attaches to its own containers only."""
    other = h.executor(deployment=f"test-{uuid.uuid4().hex}")
    mine, theirs = h.spec(["sleep", "600"]), h.spec(["sh", "-c", "sleep 2; echo done"])
    h.ex.start(mine)
    other.start(theirs)
    assert {c.labels[LABEL_DEPLOYMENT] for c in h.containers(mine.child_id)} == {h.deployment}

    assert h.ex.running() == {mine.child_id: 1}
    assert other.running() == {theirs.child_id: 1}
    assert other.sweep(set()) == [theirs.child_id]
    assert h.containers(theirs.child_id) == []
    assert h.ex.running() == {mine.child_id: 1}  # the other agent's start-up sweep left it alone
    assert h.ex.poll(theirs.child_id) == RunResult(
        Outcome.LOST, [], "the Docker engine has no containers for this run"
    )
    restarted = h.executor()  # the same deployment after a restart finds its run again
    assert restarted.running() == {mine.child_id: 1}
    h.ex.cancel(mine.child_id)


def test_a_deployment_id_must_be_able_to_label_a_container(h: Harness) -> None:
    with pytest.raises(ValueError, match="deployment"):
        h.executor(deployment="not a label value!")


def test_tasks_mount_inputs_and_outputs_below_tmp_and_beside_the_datasets(h: Harness, tmp_path) -> None:
    """Docker mounts parents first: a file or directory below the /tmp tmpfs, and a writable /data with the
    dataset read-only at /data/omop inside it, are each what the task sees."""
    from fivesafes_tes.agent.policy import Dataset, TrePolicy
    from fivesafes_tes.agent.staging import claimed, prepare
    from fivesafes_tes.egress.held import OutputKey

    dataset = h.dataset("omop")
    (dataset / "person.csv").write_text("person_id\n1\n")
    policy = TrePolicy(
        allowed_images=[h.image], datasets={"omop": Dataset(path=dataset)}, grants={"p": ["omop"]}
    )
    script = (
        "set -e\n"
        "sh /tmp/run_snakemake.sh > /tmp/results/job.txt\n"
        "cat /data/file1 > /data/outfile\n"
        "wc -l < /data/omop/person.csv >> /data/outfile\n"
        "echo scratch > /tmp/scratch\n"
        "if touch /data/omop/probe 2>/dev/null; then echo dataset=writable; else echo dataset=read-only; fi\n"
        "if rm /tmp/run_snakemake.sh 2>/dev/null; then echo script=removed; else echo script=kept; fi\n"
    )
    task = {
        "executors": [{"image": h.image, "command": ["sh", "-c", script]}],
        "inputs": [
            {"path": "/tmp/run_snakemake.sh", "content": "echo job ran\n"},
            {"path": "/data/file1", "content": "input under /data\n"},
        ],
        "outputs": [
            {"path": "/data/outfile", "url": "s3://r/outfile"},
            {"path": "/tmp/results", "type": "DIRECTORY", "url": "s3://r/results/"},
        ],
    }
    spec = prepare(
        task,
        child_id=f"c{uuid.uuid4().hex[:12]}",
        attempt=1,
        tre=h.tre,
        project="p",
        policy=policy,
        run_as=f"{NOBODY}:{NOBODY}",
    )
    spec = dataclasses.replace(spec, limits=SMALL)
    result = h.run(spec)
    assert result.outcome is Outcome.SUCCEEDED, (result, h.log(spec, 0, "stderr"))
    assert h.log(spec, 0).split() == ["dataset=read-only", "script=kept"]
    held_files = claimed(task, h.ex.collect(spec.child_id, tmp_path / "scratch"), 1)
    held = {key.path: host.read_text() for key, host in held_files.items() if isinstance(key, OutputKey)}
    assert held == {"/data/outfile": "input under /data\n2\n", "/tmp/results/job.txt": "job ran\n"}
    assert sorted(p.name for p in dataset.iterdir()) == ["person.csv"]


def test_a_restarted_agent_reattaches_and_never_starts_twice(h: Harness) -> None:
    spec = h.spec(["sh", "-c", "sleep 1; echo one"], ["echo", "two"])
    h.ex.start(spec)
    h.wait_started(spec.child_id)
    before = {c.name: (c.id, c.attrs["State"]["StartedAt"]) for c in h.containers(spec.child_id)}

    agent = h.executor()  # a new process after kill -9: no memory of the run
    assert agent.running() == {spec.child_id: 1}
    agent.start(spec)  # the re-delivered lease starts it "again"
    h.ex.start(spec)
    after = {c.name: (c.id, c.attrs["State"]["StartedAt"]) for c in h.containers(spec.child_id)}
    assert after == before

    result = h.wait(spec.child_id, ex=agent)
    assert result.outcome is Outcome.SUCCEEDED, result.message
    assert [h.log(spec, i) for i in range(2)] == ["one\n", "two\n"]
    assert len(h.containers(spec.child_id)) == 2


def test_a_new_attempt_supersedes_the_old_one(h: Harness) -> None:
    first = h.spec(["sleep", "600"])
    h.ex.start(first)
    second = dataclasses.replace(first, attempt=2, steps=[Step(image=h.image, command=["echo", "again"])])
    h.ex.start(second)
    assert {c.name for c in h.containers(first.child_id)} == {f"fst-{first.child_id}-2-0"}
    assert h.wait(first.child_id).outcome is Outcome.SUCCEEDED
    with pytest.raises(ExecutorError, match="superseded"):
        h.ex.start(first)


# --- RELIABILITY 20: no secret reaches a task ------------------------------------------------


def test_agent_secrets_never_reach_the_container(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("FIVESAFES_AGENT_TOKEN", canary)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", canary)
    ex = h.executor()  # made after the secrets are in the agent's environment
    spec = h.spec(
        Step(image=h.image, command=["sh", "-c", "env; cat /proc/1/environ"], env={"MY_VAR": "mine"})
    )
    ex.start(spec)
    h.wait(spec.child_id, ex=ex)
    logs = h.log(spec, 0) + h.log(spec, 0, "stderr")
    assert "MY_VAR=mine" in logs
    assert "FIVESAFES_DEADLINE=" in logs
    assert canary not in logs
    for container in h.containers(spec.child_id):
        assert canary not in str(container.attrs)


# --- RELIABILITY 18: the checker itself ------------------------------------------------------


def test_check_container_config_catches_every_escape_vector(h: Harness) -> None:
    h.ex.start(spec := h.spec(["true"]))
    sound = h.containers(spec.child_id)[0].attrs
    assert violations(sound) == []

    def broken(path: str, value) -> dict:
        cfg = copy.deepcopy(sound)
        *parents, key = path.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        node[key] = value
        return cfg

    sock = {"Type": "bind", "Source": "/var/run/docker.sock", "Destination": "/var/run/docker.sock"}
    for path, value in [
        ("HostConfig.Privileged", True),
        ("HostConfig.CapAdd", ["SYS_ADMIN"]),
        ("HostConfig.CapDrop", []),
        ("HostConfig.SecurityOpt", ["no-new-privileges:true", "seccomp=unconfined"]),
        ("HostConfig.SecurityOpt", []),
        ("HostConfig.NetworkMode", "host"),
        ("HostConfig.NetworkMode", "bridge"),
        ("HostConfig.PidMode", "host"),
        ("HostConfig.IpcMode", "host"),
        ("HostConfig.UTSMode", "host"),
        ("HostConfig.UsernsMode", "host"),
        ("HostConfig.Devices", [{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda"}]),
        ("HostConfig.ReadonlyRootfs", False),
        ("HostConfig.Binds", ["/var/run/docker.sock:/var/run/docker.sock"]),
        ("HostConfig.Binds", ["/:/host"]),
        ("Mounts", [sock]),
        ("HostConfig.Memory", 0),
        ("HostConfig.MemorySwap", -1),
        ("HostConfig.NanoCpus", 0),
        ("HostConfig.PidsLimit", 0),
        ("HostConfig.RestartPolicy", {"Name": "always"}),
        ("Config.User", "0:0"),
        ("Config.User", ""),
    ]:
        with pytest.raises(SandboxViolation):
            check_container_config(broken(path, value))


def test_validate_run_spec_without_an_engine(tmp_path: Path) -> None:
    spec = RunSpec("c", 1, "t", [Step(image="i", command=["true"])], Limits())
    validate_run_spec(spec)
    with pytest.raises(ValueError, match="empty command"):
        validate_run_spec(RunSpec("c", 1, "t", [Step(image="i", command=[])], Limits()))
    with pytest.raises(ValueError, match="used twice"):
        validate_run_spec(dataclasses.replace(spec, writable=["/x"], datasets=[DatasetMount("d", "/x")]))
    with pytest.raises(ValueError, match="absolute"):
        validate_run_spec(RunSpec("c", 1, "t", [Step(image="i", command=["cat"], stdin="in.txt")], Limits()))
    with pytest.raises(ValueError, match="does not exist"):
        lay_out(
            dataclasses.replace(spec, datasets=[DatasetMount("d", "/d")]),
            Workspace(tmp_path / "w"),
            {"d": tmp_path / "nope"},
        )
