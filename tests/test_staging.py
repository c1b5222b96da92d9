"""Staging at the TRE: what a task may ask for, the mounts it gets, and which files are collected as
its outputs (plain, directory and wildcard outputs with path_prefix)."""

from __future__ import annotations

import pytest

from fivesafes_tes.agent.policy import Dataset, TrePolicy
from fivesafes_tes.agent.staging import StagingRefused, Workspace, collect, prepare, reserved_paths
from fivesafes_tes.egress.held import LogKey, OutputKey, Stream

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
        root=tmp_path / "work",
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
    rw = {m.target: m.source for m in spec.mounts if not m.read_only}
    ro = {m.target: m.source for m in spec.mounts if m.read_only}
    assert set(rw) == {"/out", "/out/plots", "/out/report"}
    assert set(ro) == {"/data/omop", "/in/script.R"}
    assert ro["/in/script.R"].read_text() == "print(1)"
    assert spec.limits.cpu_cores == 2
    assert spec.limits.memory_bytes == 1 << 29
    (rw["/out"] / "table.csv").write_text("n\n12\n")
    (rw["/out"] / "scratch.tmp").write_text("not an output")
    (rw["/out/plots"] / "a.png").write_bytes(b"png")
    (rw["/out/plots"] / "notes.txt").write_text("not matched")
    (rw["/out/report"] / "sub").mkdir()
    (rw["/out/report"] / "sub" / "index.html").write_text("<p>")
    (rw["/out/report"] / "link").symlink_to("/etc/passwd")  # never followed, never held
    (spec.logs_dir / "step-0.stdout").write_text("ok")
    held = set(
        collect(
            task(
                outputs=[
                    {"path": "/out/table.csv", "url": "s3://r/table.csv"},
                    {"path": "/out/plots/*.png", "path_prefix": "/out/plots", "url": "s3://r/plots/"},
                    {"path": "/out/report", "type": "DIRECTORY", "url": "s3://r/report/"},
                ]
            ),
            Workspace(tmp_path / "work"),
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
    rw = {m.target: m.source for m in spec.mounts if not m.read_only}
    ro = {m.target: m.source for m in spec.mounts if m.read_only}
    assert set(rw) == {"/data", "/tmp/results", "/vol/A"}
    assert set(ro) == {"/data/omop", "/tmp/run_snakemake.sh"}
    assert (rw["/data"] / "file1").read_text() == "in /data"  # inside a writable dir: copied there
    assert ro["/tmp/run_snakemake.sh"].read_text() == "echo job"


def test_a_project_without_the_grant_may_use_the_datasets_path(tmp_path):
    spec = stage(tmp_path, task(volumes=["/data/omop"]), project="beta")
    assert [(m.target, m.read_only) for m in spec.mounts] == [("/data/omop", False)]


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
    assert all(not m.target.startswith("/data") for m in spec.mounts)


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
        prepare(over, policy=tight, root=tmp_path / "work", **arguments)
    assert str(refused.value) == reason
    assert not (tmp_path / "work").exists()
    at_cap = {k: v[:2] if isinstance(v, list) else v for k, v in over.items()}
    if cap == "max_env_vars":
        at_cap = {"executors": [STEP, {**STEP, "env": {"A": "1", "B": "2"}}]}
    assert len(prepare(at_cap, policy=tight, root=tmp_path / "work", **arguments).steps) >= 1
