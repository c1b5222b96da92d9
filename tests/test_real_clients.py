"""Real GA4GH TES clients against a live gateway, on SQLite and on PostgreSQL.

py-tes 1.1.x runs in this process. py-tes 0.4.x (still pinned by the Snakemake and Toil TES
plugins) cannot share a virtualenv with it (both import as `tes`), so it runs in its own
interpreter (`.venv-pytes04`, made by `scripts/bootstrap.sh --with-pytes04`) through
`tests/clients/pytes04_roundtrip.py`, which prints what it saw as JSON.

The clients are used as their users use them; a failure here is a server bug until shown otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attr
import httpx
import pytest
import requests
import tes

from fivesafes_tes import devstack
from tests import images
from tests.conftest import need_service

docker_client = images.docker_client

ROOT = Path(__file__).resolve().parent.parent
PYTES04_SCRIPT = Path(__file__).resolve().parent / "clients" / "pytes04_roundtrip.py"
PYTES04_PYTHON = Path(os.environ.get("FIVESAFES_PYTES04_PYTHON") or ROOT / ".venv-pytes04" / "bin" / "python")
TES = "/ga4gh/tes/v1"

# The dev stack's federation: alice's default project runs in both TREs; bob's in one.
USER, OLD_CLIENT_USER = "alice", "bob"


@pytest.fixture
def stack(tmp_path: Path, database_url: str) -> Iterator[devstack.DevStack]:
    server = devstack.start(tmp_path / "data", database_url=database_url)
    yield server
    server.stop()


def full_task(supported_key: str) -> tes.Task:
    """A task using every request field py-tes 1.1 can send."""
    return tes.Task(
        name="real-client round trip",
        description="py-tes 1.1 sends every field",
        inputs=[
            tes.Input(
                name="data",
                description="by url",
                url="s3://inputs/data.csv",
                path="/in/data.csv",
                type="FILE",
            ),
            tes.Input(name="script", path="/in/run.sh", content="echo literal content\n", streamable=False),
            tes.Input(url="s3://inputs/dir/", path="/in/dir", type="DIRECTORY"),
        ],
        outputs=[
            tes.Output(
                name="result", description="one file", url="s3://out/result.csv", path="/out/result.csv"
            ),
            tes.Output(url="s3://out/plots/", path="/out/*.png", path_prefix="/out/", type="FILE"),
            tes.Output(url="s3://out/dir/", path="/out/dir", type="DIRECTORY"),
        ],
        resources=tes.Resources(
            cpu_cores=2,
            ram_gb=4,  # an int where the spec says double: JSON has one number type
            disk_gb=10.5,
            preemptible=False,
            zones=["uk"],
            backend_parameters={supported_key: "x", "VmSize": "not supported, so dropped"},
            backend_parameters_strict=False,
        ),
        executors=[
            tes.Executor(
                image="python:3.12",
                command=["python", "/in/run.py"],
                workdir="/work",
                stdin="/in/data.csv",
                stdout="/out/stdout.txt",
                stderr="/out/stderr.txt",
                env={"MODE": "test", "EMPTY": ""},
                ignore_error=True,
            ),
            tes.Executor(image="alpine:3.20", command=["true"]),
        ],
        volumes=["/vol/a", "/vol/b"],
        # py-tes drops None values before sending (tes.models._drop_none), so "unset" never
        # reaches the server from this client; test_null_tag_value sends one directly.
        tags={"study": "round-trip", "empty": "", "unset": None},
    )


def test_pytes11_round_trip(stack: devstack.DevStack) -> None:
    client = tes.HTTPClient(stack.url, token=stack.token(USER, "researcher"))

    info = client.get_service_info()
    assert info.type == {"group": "org.ga4gh", "artifact": "tes", "version": "1.1.0"}
    assert info.id == stack.settings.service_id
    assert info.name == stack.settings.service_name
    assert sorted(info.tes_resources_backend_parameters) == sorted(stack.settings.backend_parameters)
    supported = info.tes_resources_backend_parameters[0]

    task = full_task(supported)
    task_id = client.create_task(task)
    assert isinstance(task_id, str)
    assert task_id

    # MINIMAL: id and state only.
    minimal = client.get_task(task_id, view="MINIMAL")
    assert minimal.as_dict() == {"id": task_id, "state": "QUEUED"}

    # BASIC: every field as sent, except input content; no system logs.
    basic = client.get_task(task_id, view="BASIC")
    expected_resources = attr.evolve(task.resources, backend_parameters={supported: "x"})
    assert basic.id == task_id
    assert basic.state == "QUEUED"
    assert basic.name == task.name
    assert basic.description == task.description
    assert basic.inputs == [attr.evolve(i, content=None) for i in task.inputs]
    assert basic.outputs == task.outputs
    assert basic.resources == expected_resources
    assert basic.executors == task.executors
    assert basic.volumes == task.volumes
    assert basic.tags == {"study": "round-trip", "empty": ""}
    assert basic.creation_time.tzinfo is not None
    assert abs(basic.creation_time - datetime.now(UTC)) < timedelta(minutes=5)
    assert all(log.system_logs is None for log in basic.logs or [])

    # FULL: everything, input content included; the dropped backend parameter is explained.
    full = client.get_task(task_id, view="FULL")
    assert attr.evolve(full, logs=None) == attr.evolve(basic, inputs=task.inputs, logs=None)
    system_logs = [line for log in full.logs for line in log.system_logs or []]
    assert any("VmSize" in line for line in system_logs), system_logs

    # ListTasks in every view finds it, rendered as GetTask renders it.
    for view, single in (("MINIMAL", minimal), ("BASIC", basic), ("FULL", full)):
        listed = {t.id: t for t in client.list_tasks(view=view).tasks}
        assert listed[task_id] == single, view

    # Paging: page_size and page_token as py-tes passes them.
    others = {
        client.create_task(tes.Task(executors=[tes.Executor(image="alpine", command=["true"])]))
        for _ in range(2)
    }
    first = client.list_tasks(page_size=2)
    assert len(first.tasks) == 2
    assert first.next_page_token
    second = client.list_tasks(page_size=2, page_token=first.next_page_token)
    assert not second.next_page_token
    ids = [t.id for t in first.tasks + second.tasks]
    assert sorted(ids) == sorted({task_id} | others)

    # Cancel, then cancel again: the second is a no-op, not an error.
    assert client.cancel_task(task_id) is None
    assert client.get_task(task_id, view="MINIMAL").state == "CANCELED"
    assert client.cancel_task(task_id) is None
    after = client.get_task(task_id, view="FULL")
    assert after.state == "CANCELED"
    cancel_lines = [
        line for log in after.logs for line in log.system_logs or [] if line.startswith("canceled by")
    ]
    assert len(set(cancel_lines)) == 1, cancel_lines
    assert {client.get_task(i).state for i in others} == {"QUEUED"}

    # Unknown ids: py-tes tries every base path, then raises the 404.
    for call in (lambda: client.get_task("no-such-task"), lambda: client.cancel_task("no-such-task")):
        with pytest.raises(requests.HTTPError) as caught:
            call()
        assert caught.value.response.status_code == 404


def test_null_tag_value(stack: devstack.DevStack) -> None:
    """A null tag value (which py-tes never sends) is stored and shown as "", and py-tes reads it."""
    token = stack.token(USER, "researcher")
    body = {"executors": [{"image": "alpine", "command": ["true"]}], "tags": {"unset": None, "set": "v"}}
    response = httpx.post(f"{stack.url}{TES}/tasks", json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    task = tes.HTTPClient(stack.url, token=token).get_task(response.json()["id"], view="BASIC")
    assert task.tags == {"unset": "", "set": "v"}


# --- py-tes 0.4.x -----------------------------------------------------------------------------


def run_pytes04(stack: devstack.DevStack) -> dict[str, Any]:
    need_service(
        "py-tes 0.4.x interpreter",
        PYTES04_PYTHON.exists(),
        f"{PYTES04_PYTHON} is missing; run scripts/bootstrap.sh --with-pytes04",
    )
    result = subprocess.run(
        [str(PYTES04_PYTHON), str(PYTES04_SCRIPT), stack.url, stack.token(OLD_CLIENT_USER, "researcher")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    report = json.loads(result.stdout)
    assert report["client_version"].startswith("0.4."), report["client_version"]
    return report


def step(report: dict[str, Any], name: str) -> Any:
    """The value of one step of the script, or a failure that shows what the client saw."""
    outcome = report["steps"][name]
    if not outcome["ok"]:
        pytest.fail(f"py-tes 0.4 step {name!r} failed:\n{json.dumps(outcome, indent=2)}")
    return outcome["value"]


def test_pytes04_round_trip(stack: devstack.DevStack) -> None:
    report = run_pytes04(stack)
    failed = {name: o for name, o in report["steps"].items() if not o["ok"] and name != "service_info"}
    assert not failed, json.dumps(failed, indent=2)
    sent = report["sent"]
    task_id = step(report, "create")

    assert step(report, "get_MINIMAL") == {"id": task_id, "state": "QUEUED"}
    fields = ("name", "description", "outputs", "resources", "executors", "volumes", "tags")
    basic, full = step(report, "get_BASIC"), step(report, "get_FULL")
    for name in fields:
        assert basic[name] == sent[name], name
        assert full[name] == sent[name], name
    assert full["inputs"] == sent["inputs"]
    assert basic["inputs"] == [{k: v for k, v in i.items() if k != "content"} for i in sent["inputs"]]
    assert basic["creation_time"]
    assert full["creation_time"]

    assert task_id in [t["id"] for t in step(report, "list_MINIMAL")["tasks"]]
    listed = {t["id"]: t for t in step(report, "list_BASIC")["tasks"]}
    assert listed[task_id] == basic

    assert step(report, "cancel") is None
    assert step(report, "cancel_again") is None
    assert step(report, "get_after_cancel")["state"] == "CANCELED"


def test_pytes04_service_info(stack: devstack.DevStack) -> None:
    """py-tes 0.4 asks GET /v1/tasks/service-info and builds its own ServiceInfo from the body."""
    info = step(run_pytes04(stack), "service_info")
    assert info["name"] == stack.settings.service_name


# --- end to end through review and release, with the Docker executor ---------------------------------

# Counts the uk-tre's synthetic people into a file under /data beside the dataset, as py-tes users write.
COUNT_SCRIPT = "wc -l < /data/omop/person.csv > /data/out/count.txt; echo counted"


@pytest.fixture
def docker_stack(
    tmp_path: Path, database_url: str, request: pytest.FixtureRequest
) -> Iterator[devstack.DevStack]:
    images.ensure_busybox_image(request.getfixturevalue("docker_client"))
    with devstack.start(
        tmp_path / "data", database_url=database_url, agents=True, executor="docker", report_granularity_s=0
    ) as running:
        yield running


def approve_what_is_held(stack: devstack.DevStack, tre: str, timeout: float = 90) -> list[str]:
    """As the TRE's output checker, through its own API: wait for a child's held files, approve them all."""
    token = stack.tre_token(f"{tre}-checker", "output-checker", tre)
    api = httpx.Client(base_url=stack.tre_url(tre), headers={"Authorization": f"Bearer {token}"}, timeout=30)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = api.get("/review/v1/children").json()
        if children:
            (child,) = children
            names = sorted(f["name"] for f in child["files"])
            for name in names:
                decided = api.post(
                    f"/review/v1/children/{child['child_id']}/decisions",
                    json={"name": name, "decision": "approved", "reason": "a count of the whole table"},
                )
                assert decided.status_code == 200, decided.text
            return names
        time.sleep(0.2)
    raise AssertionError(f"nothing was held for review in {tre} within {timeout} s")


def test_pytes11_runs_a_task_through_review_and_release(docker_stack: devstack.DevStack) -> None:
    from fivesafes_tes.devimages import BUSYBOX_IMAGE

    client = tes.HTTPClient(docker_stack.url, token=docker_stack.token(USER, "researcher"))
    task_id = client.create_task(
        tes.Task(
            name="py-tes 1.1 end to end",
            executors=[tes.Executor(image=BUSYBOX_IMAGE, command=["sh", "-c", COUNT_SCRIPT])],
            outputs=[tes.Output(path="/data/out/count.txt", url="s3://results/count.txt")],
            tags={"tres": "uk-tre"},
        )
    )
    held = approve_what_is_held(docker_stack, "uk-tre")
    assert held == ["/data/out/count.txt", "step-0.stderr", "step-0.stdout"]
    done = client.wait(task_id, timeout=90)
    assert done.state == "COMPLETE", done
    task = client.get_task(task_id, view="FULL")
    (log,) = task.logs
    assert log.metadata["stage"] == "released"
    assert [o.path for o in log.outputs] == ["/data/out/count.txt"]
    assert [(e.exit_code, e.stdout) for e in log.logs] == [(0, "counted\n")]


def test_pytes04_runs_a_task_through_review_and_release(docker_stack: devstack.DevStack) -> None:
    from fivesafes_tes.devimages import BUSYBOX_IMAGE

    need_service(
        "py-tes 0.4.x interpreter",
        PYTES04_PYTHON.exists(),
        f"{PYTES04_PYTHON} is missing; run scripts/bootstrap.sh --with-pytes04",
    )
    token = docker_stack.token(USER, "researcher")
    script = [
        str(PYTES04_PYTHON),
        str(PYTES04_SCRIPT),
        docker_stack.url,
        token,
        "run",
        BUSYBOX_IMAGE,
        COUNT_SCRIPT,
    ]
    with subprocess.Popen(script, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as client:
        try:
            held = approve_what_is_held(docker_stack, "uk-tre")
            stdout, stderr = client.communicate(timeout=120)
        finally:
            client.kill()
    assert client.returncode == 0, f"stdout:\n{stdout}\nstderr:\n{stderr}"
    assert held == ["/data/out/count.txt", "step-0.stderr", "step-0.stdout"]
    report = json.loads(stdout)
    assert report["client_version"].startswith("0.4.")
    assert step(report, "create")
    assert step(report, "wait") == "COMPLETE"
    task = step(report, "get_FULL")
    (log,) = task["logs"]
    assert log["metadata"]["stage"] == "released"
    assert [o["path"] for o in log["outputs"]] == ["/data/out/count.txt"]
    assert [(e["exit_code"], e["stdout"]) for e in log["logs"]] == [(0, "counted\n")]
