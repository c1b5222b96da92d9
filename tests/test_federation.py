"""Projects, TREs and members: who may submit where, and what each person sees (RELIABILITY 2)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

TES = "/ga4gh/tes/v1"
ADMIN = "/admin/v1"


def task(**tags):
    return {"name": "t", "executors": [{"image": "alpine", "command": ["true"]}], "tags": tags}


def submit(gateway, user="alice", **tags):
    return gateway.client.post(f"{TES}/tasks", json=task(**tags), headers=gateway.headers(user))


def full(gateway, task_id, user="alice"):
    return gateway.client.get(
        f"{TES}/tasks/{task_id}", params={"view": "FULL"}, headers=gateway.headers(user)
    ).json()


def test_default_project_fans_out_to_all_its_tres(gateway):
    response = submit(gateway)
    assert response.status_code == 200
    got = full(gateway, response.json()["id"])
    assert got["state"] == "QUEUED"
    assert [(log["metadata"]["tre"], log["metadata"]["stage"]) for log in got["logs"]] == [
        ("sg-tre", "received"),
        ("uk-tre", "received"),
    ]


@pytest.mark.parametrize("key", ["project", "Project", "PROJECT"])
def test_project_tag_key_in_any_case(gateway, key):
    response = gateway.client.post(
        f"{TES}/tasks", json=task(**{key: "Alpha"}), headers=gateway.headers("carol")
    )
    assert response.status_code == 200, response.text
    # bob's only project is beta: the tag is read (not his default), and alpha is not his
    refused = submit(gateway, "bob", **{key: "Alpha"})
    assert refused.status_code == 403
    assert "beta" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("tres", "expected"),
    [
        ("uk-tre", ["uk-tre"]),
        ("sg-tre|uk-tre", ["sg-tre", "uk-tre"]),
        ("sg-tre, uk-tre", ["sg-tre", "uk-tre"]),
        ("sg-tre,sg-tre", ["sg-tre"]),
    ],
)
def test_tres_tag_picks_a_subset(gateway, tres, expected):
    response = submit(gateway, tres=tres)
    assert response.status_code == 200, response.text
    assert [log["metadata"]["tre"] for log in full(gateway, response.json()["id"])["logs"]] == expected


def test_unknown_tre_in_tag_is_400_naming_the_choices(gateway):
    response = submit(gateway, tres="uk-tre|mars-tre")
    assert response.status_code == 400
    assert "mars-tre" in response.json()["detail"]
    assert "sg-tre" in response.json()["detail"]
    # bob's project runs in the UK only
    response = submit(gateway, user="bob", tres="sg-tre")
    assert response.status_code == 400
    assert "uk-tre" in response.json()["detail"]


def test_submitting_to_a_project_you_are_not_in_is_403(gateway):
    response = submit(gateway, user="bob", project="alpha")
    assert response.status_code == 403
    assert "beta" in response.json()["detail"]
    response = submit(gateway, user="nobody")
    assert response.status_code == 400
    assert "federation admin" in response.json()["detail"]


def test_project_dates_are_enforced(gateway):
    admin = gateway.headers("fed", "federation-admin")
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    gateway.client.patch(f"{ADMIN}/projects/alpha", json={"starts_on": tomorrow}, headers=admin)
    response = submit(gateway)
    assert response.status_code == 403
    assert "starts on" in response.json()["detail"]
    gateway.client.patch(
        f"{ADMIN}/projects/alpha", json={"starts_on": "2020-01-01", "ends_on": yesterday}, headers=admin
    )
    response = submit(gateway)
    assert response.status_code == 403
    assert "ended" in response.json()["detail"]


def test_members_of_a_project_see_its_tasks_others_never(gateway):
    alice_task = submit(gateway).json()["id"]
    bob_task = submit(gateway, user="bob").json()["id"]
    carol = gateway.client.get(f"{TES}/tasks", headers=gateway.headers("carol")).json()["tasks"]
    assert [t["id"] for t in carol] == [alice_task]
    bob = gateway.client.get(f"{TES}/tasks", headers=gateway.headers("bob")).json()["tasks"]
    assert [t["id"] for t in bob] == [bob_task]
    for view in ("MINIMAL", "BASIC", "FULL"):
        assert (
            gateway.client.get(
                f"{TES}/tasks/{alice_task}", params={"view": view}, headers=gateway.headers("bob")
            ).status_code
            == 404
        )
    assert (
        gateway.client.post(f"{TES}/tasks/{alice_task}:cancel", headers=gateway.headers("bob")).status_code
        == 404
    )
    # carol, in the same project, may cancel alice's task
    assert (
        gateway.client.post(f"{TES}/tasks/{alice_task}:cancel", headers=gateway.headers("carol")).status_code
        == 200
    )


def test_leaving_a_project_hides_its_tasks(gateway):
    alice_task = submit(gateway).json()["id"]
    carol = gateway.headers("carol")
    assert gateway.client.get(f"{TES}/tasks/{alice_task}", headers=carol).status_code == 200
    admin = gateway.headers("fed", "federation-admin")
    assert gateway.client.delete(f"{ADMIN}/projects/alpha/members/carol", headers=admin).status_code == 200
    assert gateway.client.get(f"{TES}/tasks/{alice_task}", headers=carol).status_code == 404
    listed = gateway.client.get(f"{TES}/tasks", headers=carol).json().get("tasks", [])
    assert alice_task not in [t["id"] for t in listed]
    assert gateway.client.post(f"{TES}/tasks/{alice_task}:cancel", headers=carol).status_code == 404


# --- the admin API ----------------------------------------------------------------------------


def test_admin_builds_a_project_and_its_member_can_submit(gateway):
    admin = gateway.headers("fed", "federation-admin")
    assert (
        gateway.client.post(
            f"{ADMIN}/tres", json={"name": "fr-tre", "title": "France"}, headers=admin
        ).status_code
        == 201
    )
    created = gateway.client.post(
        f"{ADMIN}/projects",
        json={"name": "gamma", "tres": ["fr-tre", "uk-tre"], "ends_on": "2099-12-31"},
        headers=admin,
    )
    assert created.status_code == 201
    assert created.json()["tres"] == ["fr-tre", "uk-tre"]
    member = gateway.client.post(
        f"{ADMIN}/projects/gamma/members", json={"username": "dave", "default": True}, headers=admin
    )
    assert member.json()["members"] == ["dave"]
    assert member.json()["default_for"] == ["dave"]
    response = submit(gateway, user="dave")
    assert response.status_code == 200
    assert [log["metadata"]["tre"] for log in full(gateway, response.json()["id"], "dave")["logs"]] == [
        "fr-tre",
        "uk-tre",
    ]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"name": "Bad Name"}, 400, "lower-case"),
        ({"name": "alpha"}, 409, "already exists"),
        ({"name": "delta", "tres": ["nowhere"]}, 404, "nowhere"),
        ({"name": "delta", "starts_on": "2030-01-01", "ends_on": "2029-01-01"}, 400, "before it starts"),
        ({"name": "delta", "surprise": 1}, 400, "surprise"),
    ],
)
def test_admin_mistakes_are_explained_and_change_nothing(gateway, body, status, words):
    admin = gateway.headers("fed", "federation-admin")
    before = gateway.client.get(f"{ADMIN}/projects", headers=admin).json()
    response = gateway.client.post(f"{ADMIN}/projects", json=body, headers=admin)
    assert response.status_code == status
    assert words in response.json()["detail"]
    assert gateway.client.get(f"{ADMIN}/projects", headers=admin).json() == before


def test_image_allow_list_is_enforced_at_the_gateway(database_url, tmp_path):
    from tests.conftest import Gateway

    gw = Gateway(database_url, tmp_path / "d", allowed_images=["registry.tre.example/*"])
    try:
        refused = gw.client.post(f"{TES}/tasks", json=task(), headers=gw.headers())
        assert refused.status_code == 400
        assert "executors.0.image" in refused.json()["detail"]
        allowed = {"executors": [{"image": "registry.tre.example/stats:1", "command": ["true"]}]}
        assert gw.client.post(f"{TES}/tasks", json=allowed, headers=gw.headers()).status_code == 200
    finally:
        gw.close()


def test_no_allow_list_refuses_every_image(database_url, tmp_path):
    from tests.conftest import Gateway

    gw = Gateway(database_url, tmp_path / "d", allowed_images=[])
    try:
        refused = gw.client.post(f"{TES}/tasks", json=task(), headers=gw.headers())
        assert refused.status_code == 400
        assert "FIVESAFES_ALLOWED_IMAGES" in refused.json()["detail"]
    finally:
        gw.close()


def test_an_admin_change_applies_to_the_next_submission_at_once(gateway):
    assert submit(gateway).status_code == 200  # where alice's tasks go is now cached for a few seconds
    admin = gateway.headers("fed", "federation-admin")
    assert gateway.client.delete(f"{ADMIN}/projects/alpha/members/alice", headers=admin).status_code == 200
    refused = submit(gateway)
    assert refused.status_code == 400
    assert "your projects: none" in refused.json()["detail"]
