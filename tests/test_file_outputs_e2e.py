"""file:// outputs end to end, through Docker, review and release: the released file is written in
the folder the deployment configured, at the path the task named, and shown there in the task; an
output the checker rejected is never written (issue 9, item 4)."""

from __future__ import annotations

import hashlib

import httpx

from fivesafes_tes import devstack
from tests import images
from tests.test_release_e2e import TASK, TES, _child, _decide, _wait, uk_held

docker_client = images.docker_client


def test_a_released_file_output_is_written_in_the_configured_folder(tmp_path, docker_client):
    images.ensure_busybox_image(docker_client)
    shared = tmp_path / "shared"
    shared.mkdir()
    with devstack.start(tmp_path / "stack", agents=True, executor="docker", file_output_root=shared) as stack:
        task = {
            **TASK,
            "tags": {"tres": "uk-tre"},
            "outputs": [
                {"path": "/outputs/summary.csv", "url": f"file://{shared}/study-1/summary.csv"},
                {"path": "/outputs/detail.csv", "url": f"file://{shared}/study-1/detail.csv"},
            ],
        }
        alice = httpx.Client(
            base_url=stack.url, headers={"Authorization": f"Bearer {stack.token('alice')}"}, timeout=30
        )
        submitted = alice.post(f"{TES}/tasks", json=task)
        assert submitted.status_code == 200, submitted.text
        task_id = submitted.json()["id"]
        _wait(alice, task_id, lambda d: d["logs"][0]["metadata"]["stage"] == "awaiting_review")
        assert list(shared.iterdir()) == []  # nothing before release
        uk = stack.agents["uk-tre"]
        child = _child(uk)
        for file in uk_held(uk, child):
            decision = "rejected" if file.name == "/outputs/detail.csv" else "approved"
            _decide(
                uk,
                child,
                file.name,
                "uk-checker",
                decision,
                "person-level rows" if decision == "rejected" else "fine",
            )
        doc = _wait(
            alice,
            task_id,
            lambda d: any(o["url"].startswith("file://") for o in d["logs"][0]["outputs"]),
        )
        assert doc["logs"][0]["metadata"]["stage"] == "partially_released"
        assert {o["path"]: o["url"] for o in doc["logs"][0]["outputs"]} == {
            "/outputs/summary.csv": f"file://{shared}/study-1/summary.csv"
        }
        held = {f.name: f.sha256 for f in uk_held(uk, child)}
        written = (shared / "study-1" / "summary.csv").read_bytes()
        assert hashlib.sha256(written).hexdigest() == held["/outputs/summary.csv"]
        assert sorted(p.relative_to(shared).as_posix() for p in shared.rglob("*")) == [
            "study-1",
            "study-1/summary.csv",
        ]
