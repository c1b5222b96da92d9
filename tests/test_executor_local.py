"""The development-only local executor: same RunSpec semantics as far as plain processes allow,
and loudly labelled as unsandboxed. Plus the executor registry."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fivesafes_tes import executors
from fivesafes_tes.executors import BackendContext, DatasetMount, Limits, Outcome, RunResult, RunSpec, Step
from fivesafes_tes.executors.hostdirs import HostMount
from fivesafes_tes.executors.local import WARNING, LocalExecutor, mount_rewriter
from tests.waiting import wait_for


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalExecutor]:
    data = tmp_path / "data"
    data.mkdir()
    with pytest.warns(UserWarning, match="NOT SANDBOXED"):
        ex = LocalExecutor("dev", work_dir=tmp_path / "work", datasets={"data": data})
    yield ex
    ex.sweep(set())


def spec(tmp_path: Path, *steps: list[str] | Step, runtime_s: int = 30, **kwargs) -> RunSpec:
    child = uuid.uuid4().hex[:12]
    return RunSpec(
        child_id=child,
        attempt=1,
        tre="dev",
        steps=[s if isinstance(s, Step) else Step(image="ignored", command=s) for s in steps],
        limits=Limits(runtime_s=runtime_s),
        **kwargs,
    )


def log(ex: LocalExecutor, s: RunSpec, step: int, stream: str = "stdout") -> str:
    return ex.collect(s.child_id, Path("/nonexistent")).logs[(step, stream)].read_text()


def wait(ex: LocalExecutor, child: str, timeout: float = 20) -> RunResult:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (result := ex.poll(child)) is not None:
            return result
        time.sleep(0.05)
    raise AssertionError(f"run {child} did not end within {timeout} s")


def test_steps_run_in_order_with_mount_targets_rewritten(local: LocalExecutor, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "in.txt").write_text("a\nb\n")
    s = spec(
        tmp_path,
        ["sh", "-c", "wc -l < /data/in.txt > /out/count; echo one; echo warn >&2"],
        Step(image="x", command=["cat", "/out/count", "-"], stdin="/data/in.txt", stdout="/out/report"),
        Step(image="x", command=["sh", "-c", 'echo "$WHERE"; pwd'], env={"WHERE": "/out/x"}, workdir="/out"),
        datasets=[DatasetMount("data", "/data")],
        writable=["/out"],
    )
    local.start(s)
    local.start(s)  # idempotent
    result = wait(local, s.child_id)
    assert result.outcome is Outcome.SUCCEEDED, result.message
    assert result.message.startswith(WARNING)
    assert [st.exit_code for st in result.steps] == [0, 0, 0]
    assert log(local, s, 0) == "one\n"
    assert log(local, s, 0, "stderr") == "warn\n"
    assert log(local, s, 1).split() == ["2", "a", "b"]
    files = local.collect(s.child_id, tmp_path / "scratch").files
    assert sorted(files) == ["/out/count", "/out/report"]
    assert files["/out/report"].read_text() == log(local, s, 1)
    out = files["/out/report"].parent
    assert log(local, s, 2) == f"{out}/x\n{out}\n"


def test_mount_rewriter_only_touches_whole_paths(tmp_path: Path) -> None:
    rewrite = mount_rewriter([HostMount(tmp_path / "d", "/data"), HostMount(tmp_path / "r", "/data/raw")])
    d, r = tmp_path / "d", tmp_path / "r"
    assert rewrite("/data/raw/x") == f"{r}/x"
    assert rewrite("cat /data/a >'/data'") == f"cat {d}/a >'{d}'"
    assert rewrite("--in=/data") == f"--in={d}"
    for untouched in ("/mnt/data", "/database", "/data.bak", "data/x"):
        assert rewrite(untouched) == untouched


def test_failure_stops_and_ignore_error_continues(local: LocalExecutor, tmp_path: Path) -> None:
    s = spec(tmp_path, ["sh", "-c", "exit 3"], ["echo", "never"])
    local.start(s)
    result = wait(local, s.child_id)
    assert result.outcome is Outcome.FAILED
    assert [st.exit_code for st in result.steps] == [3]
    assert "step 1 of 2 exited with code 3" in result.message
    assert WARNING in result.message

    s = spec(tmp_path, Step(image="x", command=["no-such-program-here"], ignore_error=True), ["true"])
    local.start(s)
    result = wait(local, s.child_id)
    assert result.outcome is Outcome.SUCCEEDED
    assert [st.exit_code for st in result.steps] == [127, 0]


def test_the_deadline_kills_the_whole_process_group(local: LocalExecutor, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    s = spec(
        tmp_path, ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; sleep 60"], ["echo", "never"], runtime_s=1
    )
    t0 = time.monotonic()
    local.start(s)
    result = wait(local, s.child_id)
    assert result.outcome is Outcome.TIMED_OUT
    assert len(result.steps) == 1
    assert time.monotonic() - t0 < 5
    stray = Path(f"/proc/{int(pidfile.read_text())}/stat")

    def dead() -> bool:  # gone, or a zombie its new parent has not reaped yet
        try:
            return stray.read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    wait_for(dead, 5, "the step's background process to die with its group")


def test_cancel_running_sweep_cleanup(local: LocalExecutor, tmp_path: Path) -> None:
    a, b = spec(tmp_path, ["sleep", "60"]), spec(tmp_path, ["sleep", "60"])
    local.start(a)
    local.start(b)
    assert local.running() == {a.child_id: 1, b.child_id: 1}
    t0 = time.monotonic()
    canceled = local.cancel(a.child_id)
    result = wait(local, a.child_id)
    assert result.outcome is Outcome.CANCELED
    assert canceled == result
    assert time.monotonic() - t0 < 3
    assert local.cancel(a.child_id) == result  # no-op
    assert local.poll(a.child_id) == result
    assert local.sweep({a.child_id}) == [b.child_id]
    assert local.running() == {}
    local.cleanup(a.child_id)
    local.cleanup(a.child_id)
    assert local.poll(a.child_id).outcome is Outcome.LOST


def test_agent_environment_is_not_passed_on(
    local: LocalExecutor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("FIVESAFES_AGENT_TOKEN", canary)
    s = spec(tmp_path, Step(image="x", command=["env"], env={"MINE": "1"}))
    local.start(s)
    result = wait(local, s.child_id)
    env = log(local, s, 0)
    assert result.outcome is Outcome.SUCCEEDED
    assert "MINE=1" in env
    assert canary not in env


def test_registry(tmp_path: Path) -> None:
    assert set(executors.BACKENDS) >= {"docker", "local"}
    assert executors.backend("local") is LocalExecutor
    assert executors.backend("docker").__name__ == "DockerExecutor"
    context = BackendContext(tre="dev", deployment="d", work_dir=tmp_path)
    with pytest.warns(UserWarning, match="NOT SANDBOXED"):
        assert isinstance(executors.create("local", context), LocalExecutor)
    with pytest.raises(ValueError, match="unknown executor 'nope'"):
        executors.create("nope", context)
