"""The gateway's pages under /web: a researcher signs in with the federation's issuer (provisioned and
audited as on a first API call) and sees the tasks the TES API would list for them, no one else's;
the security headers cover the pages and leave the API and its /docs as they were."""

from __future__ import annotations

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from sqlalchemy import select

from fivesafes_tes.audit.tables import AuditRecord
from fivesafes_tes.auth.tables import User
from tests.web import gateway_site, sign_in, sign_in_landing

TASK = {"name": "count-diabetes", "executors": [{"image": "alpine", "command": ["true"]}]}
POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


@pytest.fixture
def site(tmp_path):
    with gateway_site(tmp_path) as site:
        yield site


def test_a_researcher_signs_in_and_sees_their_tasks_only(site):
    submitted = httpx.post(
        f"{site.url}/ga4gh/tes/v1/tasks",
        json=TASK,
        headers={"Authorization": f"Bearer {site.token('bob')}"},
    )
    assert submitted.status_code == 200, submitted.text
    bob, landed = sign_in_landing(site, "bob", "/web/tasks")
    assert landed == "/web/tasks"
    page = bob.get("/web/tasks")
    assert page.status_code == 200
    assert submitted.json()["id"] in page.text
    assert "count-diabetes" in page.text
    alice = sign_in(site, "alice", "/web/tasks")
    assert submitted.json()["id"] not in alice.get("/web/tasks").text
    assert "No task yet." in alice.get("/web/tasks").text


def test_signing_in_provisions_the_user_and_is_audited(site):
    carol = sign_in(site, "carol", "/web/")
    # named apart from every TRE's, which the embedded stack serves on the same host name
    assert [c.name for c in carol.cookies.jar] == ["fivesafes-gateway-session"]
    with site.db.read() as session:
        user = session.scalars(select(User).where(User.username == "carol")).one()
        assert user.issuer == site.issuer.issuer_url
        actions = [r.action for r in session.scalars(select(AuditRecord).where(AuditRecord.actor == "carol"))]
    assert "web.sign_in" in actions


def test_without_a_session_a_page_sends_the_browser_to_sign_in(site):
    response = httpx.get(f"{site.url}/web/tasks")
    assert response.status_code == 303
    assert response.headers["location"] == "/web/login?next=/web/tasks"


def test_a_sign_in_never_returns_outside_the_pages(site):
    for target in ("/ga4gh/tes/v1/tasks", "https://evil.example/web/", "//evil.example/web/"):
        assert sign_in_landing(site, "alice", target)[1] == "/web/"


def test_the_headers_cover_the_pages_and_not_the_api(site):
    alice = sign_in(site, "alice")
    for path in ("/web/", "/web/tasks", "/web/static/web.css", "/web/login"):
        assert alice.get(path).headers["content-security-policy"] == POLICY, path
    for path in ("/docs", "/ga4gh/tes/v1/service-info"):
        assert "content-security-policy" not in alice.get(path).headers, path


def test_every_gateway_page_sends_a_browser_without_a_session_to_sign_in(site):
    pages = [
        (method, route.path)
        for route in iter_route_contexts(site.app.routes)
        if route.path.startswith("/web/") and route.path not in ("/web/login", "/web/auth/callback")
        for method in route.methods or ()
        if method != "HEAD"
    ]
    assert ("GET", "/web/tasks") in pages
    for method, path in pages:
        response = httpx.request(
            method, f"{site.url}{path}", data={"csrf": "x"} if method == "POST" else None
        )
        if method == "GET":
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/web/login"), path
        else:
            assert response.status_code == 401, path


def test_a_task_page_shows_each_tre_and_refuses_other_peoples_tasks(site):
    submitted = httpx.post(
        f"{site.url}/ga4gh/tes/v1/tasks",
        json={**TASK, "tags": {"project": "alpha"}},
        headers={"Authorization": f"Bearer {site.token('alice')}"},
    ).json()["id"]
    alice = sign_in(site, "alice")
    page = alice.get(f"/web/tasks/{submitted}")
    assert page.status_code == 200
    for shown in ("count-diabetes", "uk-tre: received", "sg-tre: received", "<code>alpine</code>"):
        assert shown in page.text, shown
    assert f'href="/web/tasks/{submitted}"' in alice.get("/web/tasks").text
    bob = sign_in(site, "bob")
    refused = bob.get(f"/web/tasks/{submitted}")
    assert refused.status_code == 404
    with site.db.read() as session:
        denied = session.scalars(select(AuditRecord).where(AuditRecord.actor == "bob")).all()
    assert [r.outcome for r in denied if r.object == f"task:{submitted}"] == ["denied"]
    assert alice.get("/web/tasks", params={"page": "not-a-token"}).status_code == 400


def test_a_federation_admin_sees_the_tres_projects_and_members_and_no_one_else_does(site):
    admin = sign_in(site, "federation-admin")
    page = admin.get("/web/federation")
    assert page.status_code == 200, page.text
    for shown in ("<code>uk-tre</code>", "<code>sg-tre</code>", "<code>alpha</code>", "<li>alice"):
        assert shown in page.text, shown
    assert 'href="/web/federation"' in admin.get("/web/").text
    alice = sign_in(site, "alice")
    refused = alice.get("/web/federation")
    assert refused.status_code == 403
    assert "this page needs the role federation-admin" in refused.text
    assert 'href="/web/federation"' not in alice.get("/web/").text
