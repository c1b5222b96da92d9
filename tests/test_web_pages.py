"""The TRE's pages over HTTP: sign-in through the development issuer, who may see what, CSRF on every
form, the security headers, and that a decision taken in a page is the API's decision (audited)."""

from __future__ import annotations

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from sqlalchemy import select

from fivesafes_tes.agent.tables import LocalDecision
from fivesafes_tes.audit.tables import AuditRecord
from tests.web import csrf_of, sign_in, sign_in_landing, tre_site

POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


@pytest.fixture
def site(tmp_path):
    with tre_site(tmp_path) as site:
        yield site


def test_a_tre_admin_signs_in_and_approves_a_person_recorded_and_audited(site):
    admin = sign_in(site, "uk-tre-admin", "/tre/approvals")
    page = admin.get("/tre/approvals")
    assert page.status_code == 200
    assert "Signed in as <strong>uk-tre-admin</strong>" in page.text
    assert "alice" in page.text
    assert "Project alpha" in page.text
    done = admin.post(
        "/tre/approvals",
        data={
            "csrf": csrf_of(page.text),
            "project": "alpha",
            "username": "alice",
            "decision": "approved",
            "reason": "accredited",
        },
    )
    assert done.status_code == 303
    assert "Recorded: approved alice in project alpha" in admin.get(done.headers["location"]).text
    with site.db.read() as session:
        row = session.get(LocalDecision, ("alpha", "alice"))
        assert row is not None
        assert (row.decision, row.reason, row.decided_by_name) == ("approved", "accredited", "uk-tre-admin")
        assert row.decided_by == f"{site.issuer.issuer_url}#uk-tre-admin"
        audited = session.scalars(select(AuditRecord).where(AuditRecord.action == "tre.decision")).one()
        assert (audited.actor, audited.object, audited.outcome) == (
            "uk-tre-admin",
            "project:alpha/user:alice",
            "approved",
        )
    # the API sees the page's decision
    listed = httpx.get(
        f"{site.url}/tre/v1/projects", headers={"Authorization": f"Bearer {site.token('dora', 'tre-admin')}"}
    ).json()
    assert ("alice", "approved") in [(d["username"], d["decision"]) for p in listed for d in p["decisions"]]


def test_every_page_response_carries_the_security_headers(site):
    admin = sign_in(site, "uk-tre-admin")
    for path in ("/tre/approvals", "/tre/policy", "/login", "/static/web.css", "/tre/v1/projects"):
        response = admin.get(path)
        assert response.headers["content-security-policy"] == POLICY, path
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    assert "script" not in admin.get("/tre/approvals").text.lower()


def test_the_session_cookie_is_httponly_lax_and_holds_no_token(site):
    client = sign_in(site, "uk-tre-admin")
    cookie = next(c for c in client.cookies.jar if c.name == "fivesafes-uk-tre-session")
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert "eyJ" not in cookie.value.split(".")[0] or len(cookie.value) < 900  # no JWT inside
    assert not cookie.secure


def test_https_sites_set_secure_host_only_cookies(tmp_path):
    with tre_site(tmp_path, secure=True) as site:
        client = httpx.Client(base_url=site.url)
        started = client.get("/login")
        assert "__Host-fivesafes-uk-tre-login=" in started.headers["set-cookie"]
        assert "Secure" in started.headers["set-cookie"]
        assert "HttpOnly" in started.headers["set-cookie"]
        assert "SameSite=lax" in started.headers["set-cookie"]


def test_no_session_sends_a_page_to_sign_in_and_refuses_a_form(site):
    anonymous = httpx.Client(base_url=site.url)
    for path in ("/tre/approvals", "/tre/policy", "/review"):
        response = anonymous.get(path)
        assert response.status_code == 303
        assert response.headers["location"] == f"/login?next={path}"
    posted = anonymous.post(
        "/tre/approvals", data={"project": "alpha", "decision": "approved", "reason": "x"}
    )
    assert posted.status_code == 401
    assert "not signed in" in posted.text


# Routes of the agent's app that are not pages: its API (tests/test_route_auth.py walks that) and signing in.
NOT_PAGES = ("/tre/v1/", "/review/v1/", "/openapi.json", "/login", "/auth/callback", "/static")


def test_every_page_sends_a_browser_without_a_session_to_sign_in_and_refuses_its_forms(site):
    pages = [
        (method, route.path)
        for route in iter_route_contexts(site.app.routes)
        if not route.path.startswith(NOT_PAGES)
        for method in route.methods or ()
        if method != "HEAD"
    ]
    assert ("POST", "/review/{child_id}") in pages
    anonymous = httpx.Client(base_url=site.url)
    for method, path in pages:
        url = path.replace("{child_id}", "child-1")
        if method == "GET":
            response = anonymous.get(url)
            assert response.status_code == 303, (method, path)
            assert response.headers["location"].startswith("/login"), (method, path)
        else:
            response = anonymous.post(url, data={"csrf": "x", "decision": "approved", "reason": "x"})
            assert response.status_code == 401, (method, path)


def test_a_forged_session_cookie_is_no_session(site):
    forged = httpx.Client(
        base_url=site.url, cookies={"fivesafes-uk-tre-session": "eyJpc3MiOiJ4In0.forged.sig"}
    )
    assert forged.get("/tre/approvals").status_code == 303


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_a_form_without_this_sessions_csrf_token_is_refused(site, token):
    admin = sign_in(site, "uk-tre-admin")
    form = {"project": "alpha", "username": "alice", "decision": "approved", "reason": "accredited"}
    if token is not None:
        form["csrf"] = token
    refused = admin.post("/tre/approvals", data=form)
    assert refused.status_code == 403
    assert "out of date or was not sent from this site" in refused.text
    with site.db.read() as session:
        assert session.get(LocalDecision, ("alpha", "alice")) is None


def test_another_sessions_csrf_token_is_refused(site):
    admin = sign_in(site, "uk-tre-admin")
    other = sign_in(site, "uk-tre-admin")
    token = csrf_of(other.get("/tre/approvals").text)
    form = {"csrf": token, "project": "alpha", "username": "", "decision": "approved", "reason": "ok"}
    assert admin.post("/tre/approvals", data=form).status_code == 403


def test_sign_out_needs_the_csrf_token_and_ends_the_session(site):
    admin = sign_in(site, "uk-tre-admin")
    token = csrf_of(admin.get("/tre/approvals").text)
    assert admin.post("/logout", data={"csrf": "nope"}).status_code == 403
    signed_out = admin.post("/logout", data={"csrf": token})
    assert signed_out.status_code == 200
    assert "Signed in as" not in signed_out.text
    assert 'fivesafes-uk-tre-session=""' in signed_out.headers["set-cookie"]
    assert admin.get("/tre/approvals").status_code == 303


@pytest.mark.parametrize(
    ("person", "path", "why"),
    [
        ("sg-tre-admin", "/tre/approvals", "this token is for TRE 'sg-tre', not 'uk-tre'"),
        ("uk-tre-checker", "/tre/approvals", "role tre-admin"),
        ("alice", "/tre/policy", "role tre-admin"),
        ("uk-tre-admin", "/review", "role output-checker"),
        ("sg-tre-checker", "/review", "this token is for TRE 'sg-tre', not 'uk-tre'"),
    ],
)
def test_people_of_another_tre_or_role_get_a_403_page(site, person, path, why):
    client = sign_in(site, person)
    refused = client.get(path)
    assert refused.status_code == 403
    assert why.replace("'", "&#39;") in refused.text


def test_a_form_posted_by_someone_of_another_role_is_refused(site):
    checker = sign_in(site, "uk-tre-checker")
    token = csrf_of(checker.get("/review").text)
    form = {"csrf": token, "project": "alpha", "username": "", "decision": "approved", "reason": "ok"}
    assert checker.post("/tre/approvals", data=form).status_code == 403


def test_a_decision_needs_a_reason(site):
    admin = sign_in(site, "uk-tre-admin")
    token = csrf_of(admin.get("/tre/approvals").text)
    form = {"csrf": token, "project": "alpha", "username": "alice", "decision": "approved", "reason": "  "}
    refused = admin.post("/tre/approvals", data=form)
    assert refused.status_code == 400
    assert "every decision needs a reason" in refused.text


def test_the_policy_page_shows_the_policy_in_force(site):
    page = sign_in(site, "uk-tre-admin").get("/tre/policy")
    assert page.status_code == 200
    assert "fivesafes/*" in page.text
    assert "synthetic OMOP extract" in page.text
    assert "required_approvals: 1" in page.text


@pytest.mark.parametrize(
    ("target", "lands_on"),
    [
        ("/tre/policy?x=1", "/tre/policy?x=1"),
        ("https://evil.example/", "/"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("tre/policy", "/"),
    ],
)
def test_sign_in_returns_only_to_a_page_of_this_site(site, target, lands_on):
    assert sign_in_landing(site, "uk-tre-admin", target)[1] == lands_on


def test_a_callback_that_does_not_match_the_sign_in_started_is_refused(site):
    client = httpx.Client(base_url=site.url)
    assert client.get("/auth/callback", params={"state": "x", "code": "y"}).status_code == 400
    client.get("/login")
    refused = client.get("/auth/callback", params={"state": "not-the-state", "code": "y"})
    assert refused.status_code == 401
    assert "does not match" in refused.text


def test_sign_ins_refusals_and_sign_outs_are_audited(site):
    admin = sign_in(site, "uk-tre-admin")
    admin.post("/logout", data={"csrf": csrf_of(admin.get("/tre/approvals").text)})
    stranger = httpx.Client(base_url=site.url)
    stranger.get("/login")
    stranger.get("/auth/callback", params={"state": "not-the-state", "code": "y"})
    with site.db.read() as session:
        records = [
            (r.actor, r.action, r.outcome, r.detail.get("subject") or r.detail.get("reason"))
            for r in session.scalars(select(AuditRecord).order_by(AuditRecord.seq))
        ]
    assert records == [
        ("uk-tre-admin", "web.sign_in", "allowed", "uk-tre-admin"),
        ("uk-tre-admin", "web.sign_out", "allowed", "uk-tre-admin"),
        (
            "anonymous",
            "auth.failure",
            "denied",
            "this sign-in does not match the one this browser started; sign in again",
        ),
    ]
