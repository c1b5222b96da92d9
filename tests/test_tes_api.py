"""Conformance of the TES 1.1 routes, written from the spec's text. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import random

import pytest
from sqlalchemy import func, select

from fivesafes_tes.audit.tables import AuditRecord

TES = "/ga4gh/tes/v1"
PREFIXES = ["/ga4gh/tes/v1", "/v1"]


def minimal_task(**extra):
    return {"executors": [{"image": "alpine:3.20", "command": ["echo", "hi"]}], **extra}


FULL_TASK = {
    "name": "full",
    "description": "every field",
    "inputs": [
        {"name": "script", "path": "/in/script.sh", "content": "echo secret-content"},
        {"path": "/in/data.csv", "url": "s3://bucket/data.csv", "type": "FILE", "streamable": False},
        {"path": "/in/bare", "url": "/projects/p1/bare.txt"},
        {"path": "/in/dir", "url": "s3://bucket/dir/", "type": "DIRECTORY"},
    ],
    "outputs": [
        {"name": "out", "path": "/out/result.csv", "url": "s3://results/result.csv"},
        {"path": "/out/*.png", "path_prefix": "/out/", "url": "s3://results/plots/"},
    ],
    "resources": {
        "cpu_cores": 2,
        "ram_gb": 4.5,
        "disk_gb": 10,
        "preemptible": False,
        "zones": ["uk"],
        "backend_parameters": {"TRE": "uk-tre", "VmSize": "big"},
    },
    "executors": [
        {
            "image": "python:3.12",
            "command": ["python", "-c", "print(1)"],
            "workdir": "/work",
            "stdin": "/in/data.csv",
            "stdout": "/out/stdout.txt",
            "stderr": "/out/stderr.txt",
            "env": {"MODE": "test"},
            "ignore_error": True,
        },
    ],
    "volumes": ["/vol/a"],
    "tags": {"study": "x", "empty": None},
}


def create(gateway, task=None, user="alice", **headers) -> str:
    response = gateway.client.post(
        f"{TES}/tasks", json=task or minimal_task(), headers={**gateway.headers(user), **headers}
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]


def audit_count(gateway, action: str) -> int:
    with gateway.db.read() as session:
        return session.scalar(
            select(func.count()).select_from(AuditRecord).where(AuditRecord.action == action)
        )


# --- service-info -----------------------------------------------------------------------------


def test_legacy_service_info_has_the_shape_py_tes_0_4_reads(gateway):
    response = gateway.client.get(f"{TES}/tasks/service-info")
    assert response.status_code == 200
    assert set(response.json()) == {"name", "doc", "storage"}


@pytest.mark.parametrize("path", [f"{p}/service-info" for p in PREFIXES])
def test_service_info_is_public_and_complete(gateway, path):
    response = gateway.client.get(path)
    assert response.status_code == 200
    info = response.json()
    assert info["type"] == {"group": "org.ga4gh", "artifact": "tes", "version": "1.1.0"}
    assert {"id", "name", "organization", "version", "storage", "tesResources_backend_parameters"} <= set(
        info
    )
    assert info["organization"]["name"]
    assert info["organization"]["url"]
    assert sorted(info["tesResources_backend_parameters"]) == sorted(gateway.settings.backend_parameters)


# --- create and views -------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_create_returns_id_and_default_view_is_minimal(gateway, prefix):
    response = gateway.client.post(f"{prefix}/tasks", json=minimal_task(), headers=gateway.headers())
    assert response.status_code == 200
    assert set(response.json()) == {"id"}
    task_id = response.json()["id"]
    got = gateway.client.get(f"{prefix}/tasks/{task_id}", headers=gateway.headers())
    assert got.json() == {"id": task_id, "state": "QUEUED"}


def test_full_view_returns_the_task_as_submitted(gateway):
    task_id = create(gateway, FULL_TASK)
    full = gateway.client.get(
        f"{TES}/tasks/{task_id}", params={"view": "FULL"}, headers=gateway.headers()
    ).json()
    assert full["id"] == task_id
    assert full["state"] == "QUEUED"
    for key in ("name", "description", "outputs", "executors", "volumes"):
        expected = FULL_TASK[key]
        if key == "outputs":
            expected = [{**o, "type": "FILE"} for o in expected]
        assert full[key] == expected, key
    assert full["inputs"][0]["content"] == "echo secret-content"
    assert [i["type"] for i in full["inputs"]] == ["FILE", "FILE", "FILE", "DIRECTORY"]
    assert full["inputs"][2]["url"] == "/projects/p1/bare.txt"
    assert full["tags"] == {"study": "x", "empty": ""}
    assert full["resources"]["backend_parameters"] == {
        "TRE": "uk-tre"
    }  # VmSize unsupported: dropped, not stored
    assert full["resources"]["ram_gb"] == 4.5
    assert full["resources"]["cpu_cores"] == 2
    assert full["creation_time"].endswith("Z")
    assert any("VmSize" in line for log in full["logs"] for line in log["system_logs"])


def test_basic_view_hides_content_system_logs_and_executor_output(gateway):
    task_id = create(gateway, FULL_TASK)
    basic = gateway.client.get(
        f"{TES}/tasks/{task_id}", params={"view": "BASIC"}, headers=gateway.headers()
    ).json()
    assert all("content" not in i for i in basic["inputs"])
    assert basic["inputs"][1]["url"] == "s3://bucket/data.csv"
    assert all("system_logs" not in log for log in basic["logs"])
    for log in basic["logs"]:
        assert set(log) >= {"logs", "outputs"}
        assert all("stdout" not in e and "stderr" not in e for e in log["logs"])
    assert basic["executors"] == FULL_TASK["executors"]
    assert basic["tags"] == {"study": "x", "empty": ""}


def test_minimal_view_has_only_id_and_state(gateway):
    task_id = create(gateway, FULL_TASK)
    for params in ({}, {"view": "MINIMAL"}):
        got = gateway.client.get(f"{TES}/tasks/{task_id}", params=params, headers=gateway.headers())
        assert got.json() == {"id": task_id, "state": "QUEUED"}


@pytest.mark.parametrize(
    ("task", "field"),
    [
        ({}, "executors"),
        ({"executors": []}, "executors"),
        ({"executors": [{"command": ["x"]}]}, "executors.0.image"),
        ({"executors": [{"image": "a"}]}, "executors.0.command"),
        ({"executors": [{"image": "a", "command": []}]}, "executors.0.command"),
        (minimal_task(inputs=[{"path": "relative/x", "url": "s3://a/b"}]), "inputs.0.path"),
        (minimal_task(inputs=[{"path": "/x"}]), "inputs.0"),
        (minimal_task(outputs=[{"path": "/o/*.csv", "url": "s3://r/"}]), "outputs.0"),
        (minimal_task(outputs=[{"path": "/o/a"}]), "outputs.0.url"),
        (minimal_task(resources={"cpu_cores": "2"}), "resources.cpu_cores"),
        (minimal_task(resources={"cpu_cores": -1}), "resources.cpu_cores"),
        (minimal_task(resources={"ram_gb": "lots"}), "resources.ram_gb"),
        (minimal_task(resources={"preemptible": "yes"}), "resources.preemptible"),
        (minimal_task(tags={"a": 1}), "tags.a"),
        (minimal_task(inputs=[{"path": "/x", "url": "s3://a", "type": "FOLDER"}]), "inputs.0.type"),
        (minimal_task(volumes=["vol"]), "volumes"),
        (minimal_task(name=5), "name"),
    ],
)
def test_invalid_task_is_400_naming_the_field(gateway, task, field):
    response = gateway.client.post(f"{TES}/tasks", json=task, headers=gateway.headers())
    assert response.status_code == 400, response.text
    assert field in response.json()["detail"]
    assert audit_count(gateway, "task.create") == 0


def test_body_that_is_not_json_is_400(gateway):
    response = gateway.client.post(
        f"{TES}/tasks",
        content=b"{not json",
        headers={**gateway.headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 400


def test_strict_backend_parameters_refuse_unknown_keys(gateway):
    task = minimal_task(resources={"backend_parameters": {"VmSize": "x"}, "backend_parameters_strict": True})
    response = gateway.client.post(f"{TES}/tasks", json=task, headers=gateway.headers())
    assert response.status_code == 400
    assert "VmSize" in response.json()["detail"]
    supported = minimal_task(
        resources={"backend_parameters": {"tre": "uk-tre"}, "backend_parameters_strict": True}
    )
    assert gateway.client.post(f"{TES}/tasks", json=supported, headers=gateway.headers()).status_code == 200


def test_read_only_fields_in_the_body_are_ignored(gateway):
    task_id = create(gateway, minimal_task(id="mine", state="COMPLETE", logs=[], creation_time="1999"))
    assert task_id != "mine"
    got = gateway.client.get(
        f"{TES}/tasks/{task_id}", params={"view": "FULL"}, headers=gateway.headers()
    ).json()
    assert got["state"] == "QUEUED"
    assert not got["creation_time"].startswith("1999")


def test_content_over_the_limit_is_400_and_128_kib_is_accepted(gateway):
    at_least = minimal_task(inputs=[{"path": "/x", "content": "a" * 128 * 1024}])
    assert gateway.client.post(f"{TES}/tasks", json=at_least, headers=gateway.headers()).status_code == 200
    limit = gateway.settings.max_content_bytes
    over = minimal_task(inputs=[{"path": "/x", "content": "é" * (limit // 2 + 1)}])  # 2 bytes each in UTF-8
    response = gateway.client.post(f"{TES}/tasks", json=over, headers=gateway.headers())
    assert response.status_code == 400
    assert "inputs.0.content" in response.json()["detail"]


def test_oversized_body_is_413_and_stores_nothing(gateway):
    big = minimal_task(inputs=[{"path": "/x", "content": "a" * (gateway.settings.max_body_bytes + 1)}])
    response = gateway.client.post(f"{TES}/tasks", json=big, headers=gateway.headers())
    assert response.status_code == 413
    assert audit_count(gateway, "task.create") == 0


# --- per-task caps (RELIABILITY 35) ----------------------------------------------------------

ONE_STEP = {"image": "alpine:3.20", "command": ["true"]}
# Each cap, with a task having n of what it counts.
CAPPED = {
    "executors": lambda n: {"executors": [ONE_STEP] * n},
    "inputs": lambda n: minimal_task(inputs=[{"path": f"/in/{i}", "content": "x"} for i in range(n)]),
    "outputs": lambda n: minimal_task(outputs=[{"path": f"/out/{i}", "url": "s3://r/x"} for i in range(n)]),
    "volumes": lambda n: minimal_task(volumes=[f"/vol/{i}" for i in range(n)]),
    "tags": lambda n: minimal_task(tags={f"t{i}": "v" for i in range(n)}),
    "env_vars": lambda n: {"executors": [ONE_STEP, {**ONE_STEP, "env": {f"V{i}": "x" for i in range(n)}}]},
}


def stored_rows(gateway) -> dict[str, int]:
    from fivesafes_tes.submission.tables import Child, IdempotencyKey, Task, TaskTag

    with gateway.db.read() as session:
        counts = {
            table.__tablename__: session.scalar(select(func.count()).select_from(table))
            for table in (Task, Child, TaskTag, IdempotencyKey)
        }
    return {**counts, "task.create": audit_count(gateway, "task.create")}


@pytest.mark.parametrize("cap", sorted(CAPPED))
@pytest.mark.parametrize("key", [None, "retry-1"])
def test_a_task_over_a_cap_is_400_naming_it_and_nothing_is_stored(gateway, cap, key):
    limit = getattr(gateway.settings, f"max_{cap}")
    headers = {**gateway.headers(), **({"Idempotency-Key": key} if key else {})}
    before = stored_rows(gateway)
    response = gateway.client.post(f"{TES}/tasks", json=CAPPED[cap](limit + 1), headers=headers)
    assert response.status_code == 400, response.text
    if cap == "env_vars":
        expected = (
            f"executors.1.env: {limit + 1} variables given, this gateway accepts at most {limit} per executor"
        )
    else:
        expected = f"{cap}: {limit + 1} given, this gateway accepts at most {limit}"
    assert response.json() == {"detail": expected}
    assert stored_rows(gateway) == before
    # The key was not spent: at the cap, the same key makes the task.
    task_id = create(gateway, CAPPED[cap](limit), **({"Idempotency-Key": key} if key else {}))
    assert gateway.client.get(f"{TES}/tasks/{task_id}", headers=gateway.headers()).status_code == 200


def test_caps_are_settings_and_published_in_the_openapi_document(database_url, tmp_path):
    from tests.conftest import Gateway

    gw = Gateway(database_url, tmp_path / "data", max_executors=2, max_tags=3, max_env_vars=1)
    try:
        over = gw.client.post(f"{TES}/tasks", json=CAPPED["executors"](3), headers=gw.headers())
        assert over.json()["detail"] == "executors: 3 given, this gateway accepts at most 2"
        schemas = gw.client.get("/openapi.json").json()["components"]["schemas"]
        request, executor = schemas["TaskRequest"]["properties"], schemas["ExecutorRequest"]["properties"]
        assert request["executors"]["maxItems"] == 2
        assert request["inputs"]["anyOf"][0]["maxItems"] == gw.settings.max_inputs
        assert request["tags"]["anyOf"][0]["maxProperties"] == 3
        assert executor["env"]["anyOf"][0]["maxProperties"] == 1
    finally:
        gw.close()


# --- get and ownership ------------------------------------------------------------------------


@pytest.mark.parametrize("view", ["MINIMAL", "BASIC", "FULL"])
def test_unknown_and_foreign_tasks_are_404(gateway, view):
    task_id = create(gateway, user="alice")
    for tid, user in (("01a00000-0000-7000-8000-000000000000", "alice"), (task_id, "bob")):
        response = gateway.client.get(
            f"{TES}/tasks/{tid}", params={"view": view}, headers=gateway.headers(user)
        )
        assert response.status_code == 404
    assert (
        gateway.client.post(f"{TES}/tasks/{task_id}:cancel", headers=gateway.headers("bob")).status_code
        == 404
    )
    assert (
        gateway.client.get(f"{TES}/tasks/{task_id}", headers=gateway.headers("alice")).json()["state"]
        == "QUEUED"
    )


def test_invalid_view_is_400(gateway):
    task_id = create(gateway)
    assert (
        gateway.client.get(
            f"{TES}/tasks/{task_id}", params={"view": "ALL"}, headers=gateway.headers()
        ).status_code
        == 400
    )
    assert (
        gateway.client.get(f"{TES}/tasks", params={"view": "ALL"}, headers=gateway.headers()).status_code
        == 400
    )


# --- cancel -----------------------------------------------------------------------------------


def test_cancel_is_immediate_returns_empty_and_is_a_no_op_once_ended(gateway):
    task_id = create(gateway)
    first = gateway.client.post(f"{TES}/tasks/{task_id}:cancel", headers=gateway.headers())
    assert first.status_code == 200
    assert first.json() == {}
    assert (
        gateway.client.get(f"{TES}/tasks/{task_id}", headers=gateway.headers()).json()["state"] == "CANCELED"
    )
    again = gateway.client.post(f"/v1/tasks/{task_id}:cancel", headers=gateway.headers())
    assert again.status_code == 200
    assert again.json() == {}
    assert audit_count(gateway, "task.cancel") == 1
    full = gateway.client.get(
        f"{TES}/tasks/{task_id}", params={"view": "FULL"}, headers=gateway.headers()
    ).json()
    assert [log["metadata"]["tre"] for log in full["logs"]] == ["sg-tre", "uk-tre"]  # one entry per TRE
    for log in full["logs"]:
        assert log["metadata"]["stage"] == "canceled"
        assert sum("canceled by alice" in line for line in log["system_logs"]) == 1


def test_cancel_unknown_is_404(gateway):
    response = gateway.client.post(
        f"{TES}/tasks/01a00000-0000-7000-8000-000000000000:cancel", headers=gateway.headers()
    )
    assert response.status_code == 404


# --- idempotency ------------------------------------------------------------------------------


def test_idempotency_key_same_body_same_id_other_body_409(gateway):
    first = create(gateway, minimal_task(name="a"), **{"Idempotency-Key": "k-1"})
    again = create(gateway, minimal_task(name="a"), **{"Idempotency-Key": "k-1"})
    assert again == first
    clash = gateway.client.post(
        f"{TES}/tasks", json=minimal_task(name="b"), headers={**gateway.headers(), "Idempotency-Key": "k-1"}
    )
    assert clash.status_code == 409
    assert "Idempotency-Key" in clash.json()["detail"]
    # Keys belong to their user: bob's k-1 is his own task.
    assert create(gateway, minimal_task(name="a"), user="bob", **{"Idempotency-Key": "k-1"}) != first
    assert audit_count(gateway, "task.create") == 2
    ids = [t["id"] for t in gateway.client.get(f"{TES}/tasks", headers=gateway.headers()).json()["tasks"]]
    assert ids == [first]


# --- list: filters and pagination -------------------------------------------------------------


def _dataset(gateway, seed: int = 7):
    """Tasks with names, tags and states drawn from a seeded generator; returns what was stored."""
    rng = random.Random(seed)
    stored = []
    for n in range(36):
        name = rng.choice(["align", "align_v2", "Align", "count%", "qc"]) + f"-{n}"
        tags = {}
        for key in ("study", "site"):
            if rng.random() < 0.6:
                tags[key] = rng.choice(["a", "b", ""])
        task_id = create(gateway, minimal_task(name=name, tags=tags))
        state = "QUEUED"
        if rng.random() < 0.3:
            gateway.client.post(f"{TES}/tasks/{task_id}:cancel", headers=gateway.headers())
            state = "CANCELED"
        stored.append({"id": task_id, "name": name, "tags": tags, "state": state})
    create(gateway, minimal_task(name="align-bob", tags={"study": "a"}), user="bob")
    return stored


def _matches(task, name_prefix, state, tags) -> bool:
    if name_prefix and not task["name"].startswith(name_prefix):
        return False
    if state and task["state"] != state:
        return False
    return all(key in task["tags"] and (value == "" or task["tags"][key] == value) for key, value in tags)


def _list_all(gateway, params, page_size):
    seen, token, pages = [], None, 0
    while True:
        query = {**params, "page_size": page_size, **({"page_token": token} if token else {})}
        response = gateway.client.get(f"{TES}/tasks", params=query, headers=gateway.headers())
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["tasks"]) <= page_size
        seen.extend(body["tasks"])
        pages += 1
        token = body.get("next_page_token")
        if not token:
            return seen, pages
        assert body["tasks"], "a next_page_token must only come with a non-empty page"


NAME_FILTERS = [None, "align", "align_", "count%"]
STATE_FILTERS = [None, "QUEUED", "CANCELED"]
TAG_FILTERS = [[], [("study", "a")], [("study", "")], [("study", "a"), ("site", "b")], [("site", "")]]


def test_every_filter_combination_matches_the_spec_at_page_sizes_1_and_2047(gateway):
    stored = _dataset(gateway)
    newest_first = list(reversed(stored))
    for name_prefix, state, tags in itertools.product(NAME_FILTERS, STATE_FILTERS, TAG_FILTERS):
        params: dict = {"view": "BASIC"}
        if name_prefix:
            params["name_prefix"] = name_prefix
        if state:
            params["state"] = state
        if tags:
            params["tag_key"] = [k for k, _ in tags]
            params["tag_value"] = [v for _, v in tags]
        expected = [t["id"] for t in newest_first if _matches(t, name_prefix, state, tags)]
        for page_size in (1, 2047):
            got, pages = _list_all(gateway, params, page_size)
            assert [t["id"] for t in got] == expected, (params, page_size)
            if page_size == 1:
                assert pages == max(1, len(expected))
        assert all(t["name"] != "align-bob" for t in got)


def test_tag_key_without_value_matches_any_value_and_missing_key_does_not(gateway):
    with_value = create(gateway, minimal_task(tags={"foo": "bar"}))
    with_empty = create(gateway, minimal_task(tags={"foo": ""}))
    without = create(gateway, minimal_task(tags={"baz": "bat"}))
    got = gateway.client.get(f"{TES}/tasks", params={"tag_key": "foo"}, headers=gateway.headers()).json()
    assert [t["id"] for t in got["tasks"]] == [with_empty, with_value]
    got = gateway.client.get(
        f"{TES}/tasks", params={"tag_key": "foo", "tag_value": "bar"}, headers=gateway.headers()
    )
    assert [t["id"] for t in got.json()["tasks"]] == [with_value]
    assert without not in [t["id"] for t in got.json()["tasks"]]


def test_more_tag_values_than_keys_is_400(gateway):
    response = gateway.client.get(f"{TES}/tasks", params={"tag_value": "x"}, headers=gateway.headers())
    assert response.status_code == 400
    assert "tag_value" in response.json()["detail"]


def test_default_page_size_is_256_and_token_only_when_more(gateway):
    ids = [create(gateway, minimal_task(name=f"t{n}")) for n in range(257)]
    first = gateway.client.get(f"{TES}/tasks", headers=gateway.headers()).json()
    assert len(first["tasks"]) == 256
    assert [t["id"] for t in first["tasks"]] == list(reversed(ids))[:256]
    assert set(first["tasks"][0]) == {"id", "state"}  # MINIMAL by default
    second = gateway.client.get(
        f"{TES}/tasks", params={"page_token": first["next_page_token"]}, headers=gateway.headers()
    ).json()
    assert [t["id"] for t in second["tasks"]] == [ids[0]]
    assert "next_page_token" not in second
    exact = gateway.client.get(f"{TES}/tasks", params={"page_size": 257}, headers=gateway.headers()).json()
    assert len(exact["tasks"]) == 257
    assert "next_page_token" not in exact


@pytest.mark.parametrize("page_size", [0, -1, 2048, "many"])
def test_page_size_out_of_range_is_400(gateway, page_size):
    response = gateway.client.get(f"{TES}/tasks", params={"page_size": page_size}, headers=gateway.headers())
    assert response.status_code == 400
    assert "page_size" in response.json()["detail"]


@pytest.mark.parametrize("token", ["garbage!", "bm90LWFuLWlk", "x" * 64])
def test_forged_page_token_is_400(gateway, token):
    response = gateway.client.get(f"{TES}/tasks", params={"page_token": token}, headers=gateway.headers())
    assert response.status_code == 400
    assert "page_token" in response.json()["detail"]


def test_invalid_state_filter_is_400(gateway):
    response = gateway.client.get(f"{TES}/tasks", params={"state": "DONE"}, headers=gateway.headers())
    assert response.status_code == 400
    assert "state" in response.json()["detail"]


def test_full_list_view_includes_content_basic_does_not(gateway):
    create(gateway, FULL_TASK)
    full = gateway.client.get(f"{TES}/tasks", params={"view": "FULL"}, headers=gateway.headers()).json()[
        "tasks"
    ][0]
    basic = gateway.client.get(f"{TES}/tasks", params={"view": "BASIC"}, headers=gateway.headers()).json()[
        "tasks"
    ][0]
    assert full["inputs"][0]["content"] == "echo secret-content"
    assert "content" not in basic["inputs"][0]
    assert any(log.get("system_logs") for log in full["logs"])
    assert not any("system_logs" in log for log in basic["logs"])
