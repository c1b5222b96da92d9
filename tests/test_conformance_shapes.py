"""The GA4GH TES conformance suite's task shapes, end to end through `fivesafes-tes dev` with Docker.

The suite (ga4gh/compliance-tests-ga4gh-tes) creates its template task (`alpine`, `echo hello`), polls
it to COMPLETE, filters the list by state and cancels; its example task reads and writes under /data,
sends stdin/stdout/stderr paths, a workdir, env, volumes and resources. Here `alpine` is our busybox
image under that name (nothing is pulled), allowed by the dev flag `--allow-image`, and `--auto-release`
stands in for the output checker the suite cannot be.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from fivesafes_tes import devstack
from fivesafes_tes.devimages import BUSYBOX_IMAGE
from tests import images

docker_client = images.docker_client
TES = "/ga4gh/tes/v1"

TEMPLATE = {
    "name": "CompTest",
    "description": "CompTest",
    "executors": [{"image": "alpine", "command": ["echo", "hello"]}],
}
# The suite's example body, with its input given as content (TREs fetch no URL) and a command the
# image has (its /bin/md5 is in no image).
EXAMPLE = {
    "name": "string",
    "description": "string",
    "executors": [
        {
            "image": "alpine",
            "command": ["sh", "-c", "wc -c > /data/outfile; echo $BLASTDB $HMMERDB; pwd >&2"],
            "env": {"BLASTDB": "/data/GRC38", "HMMERDB": "/data/hmmer"},
            "stdin": "/data/file1",
            "stdout": "/tmp/stdout.log",
            "stderr": "/tmp/stderr.log",
            "workdir": "/data/",
        }
    ],
    "inputs": [{"path": "/data/file1", "content": "twelve bytes"}],
    "outputs": [{"path": "/data/outfile", "url": "s3://my-object-store/outfile-1", "type": "FILE"}],
    "resources": {"cpu_cores": 4, "disk_gb": 40, "preemptible": False, "ram_gb": 8, "zones": ["us-west-1"]},
    "tags": {"WORKFLOW_ID": "cwl-01234", "PROJECT_GROUP": "alice-lab"},
    "volumes": ["/vol/A/"],
}
FINAL = ("COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED", "PREEMPTED")


@pytest.fixture(scope="module")
def researcher(docker_client, tmp_path_factory) -> Iterator[httpx.Client]:
    images.ensure_busybox_image(docker_client)
    docker_client.images.get(BUSYBOX_IMAGE).tag("alpine", "latest")
    with (
        devstack.start(
            tmp_path_factory.mktemp("conformance"),
            agents=True,
            executor="docker",
            report_granularity_s=0,
            allow_images=["alpine"],
            auto_release=True,
        ) as stack,
        httpx.Client(
            base_url=stack.url, headers={"Authorization": f"Bearer {stack.token('alice')}"}, timeout=30
        ) as client,
    ):
        yield client


def poll(client: httpx.Client, task_id: str, timeout: float = 120) -> dict:
    """As the suite's polling template does: MINIMAL until a final state; then the FULL view."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"{TES}/tasks/{task_id}", params={"view": "MINIMAL"}).json()["state"]
        if state in FINAL:
            return client.get(f"{TES}/tasks/{task_id}", params={"view": "FULL"}).json()
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} is still {state} after {timeout} s")


def test_the_template_task_completes_and_is_found_by_state(researcher: httpx.Client) -> None:
    task_id = researcher.post(f"{TES}/tasks", json=TEMPLATE).json()["id"]
    task = poll(researcher, task_id)
    assert task["state"] == "COMPLETE", task
    assert {log["metadata"]["tre"] for log in task["logs"]} == {"uk-tre", "sg-tre"}
    for log in task["logs"]:
        assert log["metadata"]["stage"] == "released"
        assert [(step["exit_code"], step["stdout"]) for step in log["logs"]] == [(0, "hello\n")]
    listed = researcher.get(f"{TES}/tasks", params={"view": "MINIMAL", "state": "COMPLETE"}).json()
    assert {"id": task_id, "state": "COMPLETE"} in listed["tasks"]


def test_the_example_task_reads_and_writes_under_data(researcher: httpx.Client) -> None:
    task_id = researcher.post(f"{TES}/tasks", json=EXAMPLE).json()["id"]
    task = poll(researcher, task_id)
    assert task["state"] == "COMPLETE", task
    for log in task["logs"]:
        assert [o["path"] for o in log["outputs"]] == ["/data/outfile"], log
        (step,) = log["logs"]
        assert (step["exit_code"], step["stdout"], step["stderr"]) == (
            0,
            "/data/GRC38 /data/hmmer\n",
            "/data\n",
        )
    results = researcher.get(f"/api/v1/tasks/{task_id}/results").json()
    for tre in results["tres"]:
        (outfile,) = [f for f in tre["files"] if f["name"] == "/data/outfile"]
        assert researcher.get(f"/api/v1/results/{outfile['id']}").text.strip() == "12"


def test_a_canceled_task_is_canceled(researcher: httpx.Client) -> None:
    task_id = researcher.post(f"{TES}/tasks", json=TEMPLATE).json()["id"]
    assert researcher.post(f"{TES}/tasks/{task_id}:cancel").json() == {}
    assert poll(researcher, task_id)["state"] == "CANCELED"
