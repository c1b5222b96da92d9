"""Changing the federation in the gateway's page: each form makes the admin API's change through the
same functions, audited the same, and comes back to the page (POST-redirect-GET); without a session,
with a forged form, as a researcher or with bad input nothing changes, and bad input is re-shown
with what to fix and what was typed. On SQLite and on PostgreSQL."""

from __future__ import annotations

import html
from datetime import date
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from fivesafes_tes.audit.tables import AuditRecord
from fivesafes_tes.submission import federation
from tests.web import GatewaySite, csrf_of, gateway_site, sign_in

ADMIN = "federation-admin"
# Every form of the page, each with input it accepts against the test federation.
FORMS: list[tuple[str, dict[str, str]]] = [
    ("/web/federation/tres", {"name": "fr-tre", "title": "France"}),
    (
        "/web/federation/projects",
        {
            "name": "gamma",
            "title": "Gamma",
            "starts_on": "2026-01-01",
            "ends_on": "2026-12-31",
            "tre.uk-tre": "yes",
        },
    ),
    ("/web/federation/projects/alpha", {"title": "Alpha renamed", "starts_on": "2026-02-01", "ends_on": ""}),
    ("/web/federation/projects/beta/tres", {"tre.sg-tre": "yes", "tre.uk-tre": "yes"}),
    ("/web/federation/projects/beta/members", {"username": "Dora", "default": "yes"}),
    ("/web/federation/projects/alpha/members/remove", {"username": "carol"}),
]


@pytest.fixture
def site(tmp_path, database_url):
    with gateway_site(tmp_path, database_url) as site:
        yield site


def federation_now(site: GatewaySite) -> tuple[Any, ...]:
    """All the federation holds, and every audit record of a change to it."""
    with site.db.read() as session:
        return (
            [(t.name, t.title) for t in federation.list_tres(session)],
            federation.describe_projects(session),
            [
                (r.actor, r.action, r.object, r.detail)
                for r in session.scalars(
                    select(AuditRecord).where(AuditRecord.action.like("admin.%")).order_by(AuditRecord.seq)
                )
            ],
        )


def changes(site: GatewaySite, since: int) -> list[tuple[str, str, str, str, Any]]:
    """The audit records of changes to the federation after the first `since` of them."""
    with site.db.read() as session:
        records = session.scalars(
            select(AuditRecord).where(AuditRecord.action.like("admin.%")).order_by(AuditRecord.seq)
        ).all()
    return [(r.actor, r.action, r.object, r.outcome, r.detail) for r in records[since:]]


def post(client: httpx.Client, path: str, form: dict[str, str], csrf: str | None) -> httpx.Response:
    return client.post(path, data=form if csrf is None else {"csrf": csrf, **form})


def test_each_form_makes_the_api_change_audited_and_returns_to_the_page(site):
    admin = sign_in(site, ADMIN, "/web/federation")
    csrf = csrf_of(admin.get("/web/federation").text)
    expected = [
        (
            [("admin.tre.add", "tre:fr-tre", {})],
            "Added TRE fr-tre.",
        ),
        (
            [
                ("admin.project.add", "project:gamma", {"starts_on": "2026-01-01", "ends_on": "2026-12-31"}),
                ("admin.project.tres", "project:gamma", {"tres": ["uk-tre"]}),
            ],
            "Added project gamma.",
        ),
        (
            [("admin.project.update", "project:alpha", {"starts_on": "2026-02-01", "ends_on": ""})],
            "Saved the title and dates of project alpha.",
        ),
        (
            [("admin.project.tres", "project:beta", {"tres": ["sg-tre", "uk-tre"]})],
            "Saved the TREs of project beta.",
        ),
        (
            [("admin.member.add", "project:beta", {"username": "dora", "default": True, "bound": False})],
            "Added Dora to project beta.",
        ),
        (
            [("admin.member.remove", "project:alpha", {"username": "carol"})],
            "Removed carol from project alpha.",
        ),
    ]
    for (path, form), (audited, said) in zip(FORMS, expected, strict=True):
        before = len(federation_now(site)[2])
        done = post(admin, path, form, csrf)
        assert done.status_code == 303, (path, done.text)
        assert done.headers["location"].startswith("/web/federation?done="), path
        page = admin.get(done.headers["location"])
        assert page.status_code == 200
        assert f'<p class="notice done" role="status">{said}</p>' in page.text, path
        assert changes(site, before) == [(ADMIN, a, o, "ok", d) for a, o, d in audited], path
    tres, projects, _ = federation_now(site)
    assert ("fr-tre", "France") in tres
    by_name = {p.name: p for p in projects}
    assert (by_name["gamma"].title, by_name["gamma"].starts_on, by_name["gamma"].tres) == (
        "Gamma",
        date(2026, 1, 1),
        ["uk-tre"],
    )
    assert (by_name["alpha"].title, by_name["alpha"].starts_on) == ("Alpha renamed", date(2026, 2, 1))
    assert by_name["alpha"].members == ["alice"]
    assert by_name["beta"].tres == ["sg-tre", "uk-tre"]
    assert (by_name["beta"].members, by_name["beta"].default_for) == (["bob", "dora"], ["bob", "dora"])
    # the page shows what changed
    page = admin.get("/web/federation").text
    for shown in ("<code>fr-tre</code>", "<code>gamma</code>", "Alpha renamed", "2026-02-01 to open"):
        assert shown in page, shown


def test_a_change_in_the_page_is_the_api_change(site):
    """The same project made by the API and by the page leaves the same federation and audit records."""
    api = httpx.post(
        f"{site.url}/admin/v1/projects",
        json={"name": "delta", "title": "Same", "starts_on": "2026-01-01", "tres": ["sg-tre"]},
        headers={"Authorization": f"Bearer {site.issuer.issue(ADMIN, [ADMIN], audience='fivesafes-tes')}"},
    )
    assert api.status_code == 201, api.text
    before = len(federation_now(site)[2])
    admin = sign_in(site, ADMIN, "/web/federation")
    form = {"name": "gamma", "title": "Same", "starts_on": "2026-01-01", "ends_on": "", "tre.sg-tre": "yes"}
    assert post(
        admin, "/web/federation/projects", form, csrf_of(admin.get("/web/federation").text)
    ).is_redirect
    by_page = changes(site, before)
    by_api = changes(site, before - len(by_page))[: len(by_page)]
    assert by_page == [(a, act, obj.replace("delta", "gamma"), out, d) for a, act, obj, out, d in by_api]
    with site.db.read() as session:
        delta, gamma = federation.describe_projects(session, ["delta", "gamma"])
    assert (gamma.title, gamma.starts_on, gamma.ends_on, gamma.tres) == (
        delta.title,
        delta.starts_on,
        delta.ends_on,
        delta.tres,
    )


def test_without_a_session_no_form_changes_anything(site):
    before = federation_now(site)
    for path, form in FORMS:
        refused = httpx.post(f"{site.url}{path}", data={"csrf": "x", **form})
        assert refused.status_code == 401, path
        assert "you are not signed in" in refused.text
    assert federation_now(site) == before


def test_a_forged_form_changes_nothing(site):
    admin = sign_in(site, ADMIN, "/web/federation")
    before = federation_now(site)
    for path, form in FORMS:
        for csrf in (None, "", "not-the-token"):
            refused = post(admin, path, form, csrf)
            assert refused.status_code == 403, (path, csrf)
            assert "this form is out of date or was not sent from this site" in refused.text
    assert federation_now(site) == before


def test_a_researcher_changes_nothing(site):
    alice = sign_in(site, "alice", "/web/tasks")
    csrf = csrf_of(alice.get("/web/tasks").text)  # her own session's token: only the role is missing
    before = federation_now(site)
    for path, form in FORMS:
        refused = post(alice, path, form, csrf)
        assert refused.status_code == 403, path
        assert "this page needs the role federation-admin" in refused.text
    assert federation_now(site) == before


BAD_INPUT = [
    # (path, form, status, what the page says, where its form is)
    (
        "/web/federation/tres",
        {"name": "UK TRE", "title": "kept"},
        400,
        "TRE name 'UK TRE' must be",
        "add-tre",
    ),
    (
        "/web/federation/tres",
        {"name": "uk-tre", "title": "kept"},
        409,
        "TRE 'uk-tre' already exists",
        "add-tre",
    ),
    (
        "/web/federation/tres",
        {"name": "x" * 64, "title": ""},
        400,
        "Name: String should have at most 63",
        "add-tre",
    ),
    ("/web/federation/tres", {"name": "nul", "title": "a\x00b"}, 400, "Title: a NUL character", "add-tre"),
    (
        "/web/federation/projects",
        {"name": "alpha", "title": "kept", "starts_on": "", "ends_on": ""},
        409,
        "project 'alpha' already exists",
        "add-project",
    ),
    (
        "/web/federation/projects",
        {"name": "gamma", "title": "kept", "starts_on": "2026-05-01", "ends_on": "2026-04-01"},
        400,
        "the project ends (2026-04-01) before it starts (2026-05-01)",
        "add-project",
    ),
    (
        "/web/federation/projects",
        {"name": "gamma", "title": "kept", "starts_on": "1 May", "ends_on": ""},
        400,
        "Starts on: Input should be a valid date",
        "add-project",
    ),
    (
        "/web/federation/projects",
        {"name": "gamma", "title": "kept", "starts_on": "", "ends_on": "", "tre.nowhere": "yes"},
        404,
        "no TRE named 'nowhere'",
        "add-project",
    ),
    (
        "/web/federation/projects/alpha",
        {"title": "kept", "starts_on": "", "ends_on": "1999-01-01"},
        400,
        "before it starts",
        "details-alpha",
    ),
    (
        "/web/federation/projects/beta/tres",
        {"tre.nowhere": "yes"},
        404,
        "no TRE named 'nowhere'",
        "tres-beta",
    ),
    (
        "/web/federation/projects/beta/members",
        {"username": " "},
        400,
        "Username: String should have at least 1",
        "member-beta",
    ),
    (
        "/web/federation/projects/beta/members/remove",
        {"username": "alice"},
        404,
        "'alice' is not a member of project 'beta'",
        "members-beta",
    ),
]


def test_bad_input_says_what_to_fix_keeps_what_was_typed_and_changes_nothing(site):
    admin = sign_in(site, ADMIN, "/web/federation")
    with site.db.write() as session:  # alpha has a start, for its end to come before
        federation.update_project(session, "setup", "alpha", starts_on=date(2026, 1, 1))
    csrf = csrf_of(admin.get("/web/federation").text)
    before = federation_now(site)
    for path, form, status, said, where in BAD_INPUT:
        refused = post(admin, path, form, csrf)
        assert refused.status_code == status, (path, form, refused.text)
        text = html.unescape(refused.text)
        assert "Nothing was changed." in text, path
        assert said in text, (path, text)
        assert f'<p class="field-error" id="{where}-error">' in refused.text, path
        assert f'href="#{where}"' in refused.text, path
        if "title" in form and "\x00" not in form["title"]:
            assert f'value="{form["title"]}"' in refused.text, path  # what was typed is kept
    assert federation_now(site) == before
    # a refused project's form opens its project and keeps the TREs ticked
    refused = post(
        admin, "/web/federation/projects/beta/tres", {"tre.sg-tre": "yes", "tre.nowhere": "yes"}, csrf
    )
    assert '<details class="project" id="project-beta" open>' in refused.text
    assert 'name="tre.sg-tre" value="yes" checked' in refused.text


def test_a_change_in_the_page_applies_to_the_next_task_at_once(site):
    """The page forgets the targets this gateway cached, as the API does: no wait for them to expire."""
    task = {
        "name": "t",
        "executors": [{"image": "alpine", "command": ["true"]}],
        "tags": {"project": "alpha"},
    }

    def submit() -> str:
        sent = httpx.post(
            f"{site.url}/ga4gh/tes/v1/tasks",
            json=task,
            headers={"Authorization": f"Bearer {site.token('alice')}"},
        )
        assert sent.status_code == 200, sent.text
        return str(sent.json()["id"])

    alice = sign_in(site, "alice")
    assert "sg-tre: received" in alice.get(f"/web/tasks/{submit()}").text
    admin = sign_in(site, ADMIN, "/web/federation")
    csrf = csrf_of(admin.get("/web/federation").text)
    assert post(admin, "/web/federation/projects/alpha/tres", {"tre.uk-tre": "yes"}, csrf).is_redirect
    page = alice.get(f"/web/tasks/{submit()}").text
    assert "uk-tre: received" in page
    assert "sg-tre" not in page
