"""Staging at the TRE: what a task may ask for, the mounts it gets, and which files are collected as
its outputs (plain, directory and wildcard outputs with path_prefix)."""

from __future__ import annotations

import pytest

from fivesafes_tes.agent.policy import Dataset, TrePolicy
from fivesafes_tes.agent.staging import StagingRefused, claimed, prepare, reserved_paths
from fivesafes_tes.egress.held import LogKey, OutputKey, Stream
from fivesafes_tes.executors import Collected, DatasetMount, InputFile
from fivesafes_tes.executors.hostdirs import Workspace, lay_out

IMAGE = "registry.tre.example/stats:1"


def policy(tmp_path) -> TrePolicy:
    data = tmp_path / "omop"
    data.mkdir()
    return TrePolicy(
        allowed_images=["registry.tre.example/*"],
        datasets={"omop": Dataset(path=data)},
        grants={"alpha": ["omop"]},
        max_cpu_cores=2,
        max_ram_gb=1,
    )


def task(**extra):
    return {"executors": [{"image": IMAGE, "command": ["run"]}], **extra}


def stage(tmp_path, t, project="alpha"):
    return prepare(
        t,
        child_id="c1",
        attempt=1,
        tre="uk-tre",
        project=project,
        policy=policy(tmp_path),
        run_as="65534:65534",
    )


def test_outputs_of_every_kind_are_collected_by_their_container_paths(tmp_path):
    spec = stage(
        tmp_path,
        task(
            inputs=[{"path": "/in/script.R", "content": "print(1)"}],
            outputs=[
                {"path": "/out/table.csv", "url": "s3://r/table.csv"},
                {"path": "/out/plots/*.png", "path_prefix": "/out/plots", "url": "s3://r/plots/"},
                {"path": "/out/report", "type": "DIRECTORY", "url": "s3://r/report/"},
            ],
            resources={"cpu_cores": 8, "ram_gb": 0.5},
        ),
    )
    assert sorted(spec.writable) == ["/out", "/out/plots", "/out/report"]
    assert spec.datasets == [DatasetMount("omop", "/data/omop")]
    assert spec.inputs == [InputFile("/in/script.R", b"print(1)")]
    assert spec.limits.cpu_cores == 2
    assert spec.limits.memory_bytes == 1 << 29
    local = tmp_path / "left"
    local.mkdir()
    left = Collected(
        files={
            path: local / str(n)
            for n, path in enumerate(
                [
                    "/out/table.csv",
                    "/out/scratch.tmp",  # not an output
                    "/out/plots/a.png",
                    "/out/plots/notes.txt",  # not matched
                    "/out/report/sub/index.html",
                ]
            )
        },
        logs={(0, "stdout"): local / "log0", (1, "stdout"): local / "log1"},  # step 1 never ran
    )
    held = set(
        claimed(
            task(
                outputs=[
                    {"path": "/out/table.csv", "url": "s3://r/table.csv"},
                    {"path": "/out/plots/*.png", "path_prefix": "/out/plots", "url": "s3://r/plots/"},
                    {"path": "/out/report", "type": "DIRECTORY", "url": "s3://r/report/"},
                ]
            ),
            left,
            steps_run=1,
        )
    )
    assert held == {
        OutputKey("/out/table.csv"),
        OutputKey("/out/plots/a.png"),
        OutputKey("/out/report/sub/index.html"),
        LogKey(0, Stream.STDOUT),
    }


@pytest.mark.parametrize(
    ("t", "words"),
    [
        (task(executors=[{"image": "docker.io/evil:1", "command": ["x"]}]), "does not allow image"),
        (task(inputs=[{"path": "/in/x", "url": "https://example.org/x"}]), "stages only literal content"),
        (
            task(executors=[{"image": IMAGE, "command": ["x"], "env": {"AWS_SECRET_ACCESS_KEY": "x"}}]),
            "reserved",
        ),
        (task(outputs=[{"path": "/out/../etc/x", "url": "s3://r/x"}]), "without '..'"),
    ],
)
def test_what_the_tre_does_not_allow_is_refused_with_a_reason(tmp_path, t, words):
    with pytest.raises(StagingRefused, match=words):
        stage(tmp_path, t)


@pytest.mark.parametrize(
    ("t", "words"),
    [
        (task(outputs=[{"path": "/data/omop/x.csv", "url": "s3://r/x"}]), "dataset omop is mounted there"),
        (task(outputs=[{"path": "/data/omop", "type": "DIRECTORY", "url": "s3://r/x"}]), "dataset omop"),
        (task(volumes=["/data/omop/scratch"]), "dataset omop"),
        (task(inputs=[{"path": "/data/omop/person.csv", "content": "x"}]), "dataset omop"),
        (task(inputs=[{"path": "/data", "content": "x"}]), "is a file where dataset omop"),
        (task(volumes=["/tmp"]), "scratch space"),
        (task(outputs=[{"path": "/tmp/x.csv", "url": "s3://r/x"}]), "scratch space"),  # its directory is /tmp
        (task(inputs=[{"path": "/.fivesafes/busybox", "content": "x"}]), "sandbox's own tools"),
        (task(volumes=["/proc/self"]), "kernel's interfaces"),
        (task(volumes=["/dev"]), "kernel's interfaces"),
        (task(volumes=["//data/omop/x"]), "dataset omop"),
        (task(inputs=[{"path": "/out", "content": "x"}], volumes=["/out"]), "also an output or volume"),
    ],
)
def test_only_the_datasets_and_the_sandboxs_own_paths_are_reserved(tmp_path, t, words):
    with pytest.raises(StagingRefused, match=words):
        stage(tmp_path, t)


def test_tasks_use_the_rest_of_data_and_paths_below_tmp(tmp_path):
    """The GA4GH conformance suite's and py-tes's ordinary shapes: files under /data beside the
    datasets, and Snakemake's job script at /tmp/run_snakemake.sh."""
    spec = stage(
        tmp_path,
        task(
            inputs=[
                {"path": "/data/file1", "content": "in /data"},
                {"path": "/tmp/run_snakemake.sh", "content": "echo job"},
            ],
            outputs=[
                {"path": "/data/outfile", "url": "s3://r/outfile"},
                {"path": "/tmp/results", "type": "DIRECTORY", "url": "s3://r/results/"},
            ],
            volumes=["/vol/A/"],
        ),
    )
    assert sorted(spec.writable) == ["/data", "/tmp/results", "/vol/A"]
    assert [d.target for d in spec.datasets] == ["/data/omop"]
    # Where a backend with host folders puts them: an input inside a writable folder is a file in it.
    mounts = lay_out(spec, Workspace(tmp_path / "work"), {"omop": tmp_path / "omop"})
    rw = {m.target: m.source for m in mounts if not m.read_only}
    ro = {m.target: m.source for m in mounts if m.read_only}
    assert set(rw) == {"/data", "/tmp/results", "/vol/A"}
    assert set(ro) == {"/data/omop", "/tmp/run_snakemake.sh"}
    assert (rw["/data"] / "file1").read_text() == "in /data"  # inside a writable dir: copied there
    assert ro["/tmp/run_snakemake.sh"].read_text() == "echo job"


def test_a_project_without_the_grant_may_use_the_datasets_path(tmp_path):
    spec = stage(tmp_path, task(volumes=["/data/omop"]), project="beta")
    assert (spec.writable, spec.datasets) == (["/data/omop"], [])


def test_the_reserved_paths_are_listed_in_one_place(tmp_path):
    tre = policy(tmp_path)
    paths = {(r.path, r.below) for r in reserved_paths(tre)}
    assert paths == {
        ("/proc", True),
        ("/sys", True),
        ("/dev", True),
        ("/.fivesafes", True),
        ("/tmp", False),
        ("/data/omop", True),
    }
    assert ("/data/omop", True) not in {(r.path, r.below) for r in reserved_paths(tre, "beta")}


def test_a_project_without_a_grant_sees_no_dataset(tmp_path):
    spec = stage(tmp_path, task(), project="beta")
    assert spec.datasets == []


STEP = {"image": IMAGE, "command": ["run"]}


@pytest.mark.parametrize(
    ("cap", "over", "reason"),
    [
        ("max_executors", {"executors": [STEP] * 3}, "executors: 3 given, uk-tre accepts at most 2"),
        (
            "max_inputs",
            task(inputs=[{"path": f"/in/{i}", "content": "x"} for i in range(3)]),
            "inputs: 3 given, uk-tre accepts at most 2",
        ),
        (
            "max_outputs",
            task(outputs=[{"path": f"/out/{i}", "url": "s3://r/x"} for i in range(3)]),
            "outputs: 3 given, uk-tre accepts at most 2",
        ),
        ("max_volumes", task(volumes=["/a", "/b", "/c"]), "volumes: 3 given, uk-tre accepts at most 2"),
        (
            "max_env_vars",
            {"executors": [STEP, {**STEP, "env": {"A": "1", "B": "2", "C": "3"}}]},
            "executors.1.env: 3 variables given, uk-tre accepts at most 2 per executor",
        ),
    ],
)
def test_a_task_over_the_tre_cap_is_refused_before_anything_is_staged(tmp_path, cap, over, reason):
    tight = policy(tmp_path).model_copy(update={cap: 2})
    arguments = {"child_id": "c1", "attempt": 1, "tre": "uk-tre", "project": "alpha", "run_as": "65534:65534"}
    with pytest.raises(StagingRefused) as refused:
        prepare(over, policy=tight, **arguments)
    assert str(refused.value) == reason
    at_cap = {k: v[:2] if isinstance(v, list) else v for k, v in over.items()}
    if cap == "max_env_vars":
        at_cap = {"executors": [STEP, {**STEP, "env": {"A": "1", "B": "2"}}]}
    assert len(prepare(at_cap, policy=tight, **arguments).steps) >= 1
