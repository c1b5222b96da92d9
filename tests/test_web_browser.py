"""The TRE's pages in a real browser: Debian's chromium, headless, driven by Playwright, against a live
gateway (development issuer) and agent. A TRE admin signs in through the issuer's login page and
approves a person; the decision is in the agent's database and audited. Every page is screenshotted
into test-artifacts/web/, loads under its Content-Security-Policy without a violation, and axe-core
(from npm, tests/browser) finds nothing serious or critical on it. Under CI=true a missing chromium,
Playwright or axe-core fails the run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from fivesafes_tes.agent.tables import LocalDecision, ReviewDecision
from fivesafes_tes.audit.tables import AuditRecord
from fivesafes_tes.web import CONTENT_SECURITY_POLICY
from tests.conftest import need_service
from tests.web import GatewaySite, TreSite, gateway_site, hold_child, tre_site

CHROMIUM = Path("/usr/bin/chromium")
AXE = Path(__file__).parent / "browser" / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts" / "web"
SERIOUS = {"serious", "critical"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need_service(
        "chromium", CHROMIUM.exists(), "apt-get install chromium (scripts/bootstrap.sh --with-browser)"
    )
    need_service("axe-core", AXE.exists(), "npm ci in tests/browser (scripts/bootstrap.sh --with-browser)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need_service("playwright", False, "pip install -e '.[test]'")
        raise
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


@pytest.fixture
def site(tmp_path, s3_store) -> Iterator[TreSite]:
    with tre_site(tmp_path, store=s3_store) as site:
        yield site


class Visit:
    """One browser tab that records CSP violations, screenshots pages and runs axe-core on them."""

    def __init__(self, browser: Any, name: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.page = self.context.new_page()
        self.name = name
        self.violations: list[str] = []
        self.page.on(
            "console",
            lambda message: (
                self.violations.append(message.text) if "Content Security Policy" in message.text else None
            ),
        )

    def check(self, label: str) -> None:
        """Screenshot the page as it is, and fail on a CSP violation or a serious axe-core finding."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{self.name}-{label}.png"), full_page=True)
        assert not self.violations, self.violations
        self.page.evaluate(AXE.read_text())  # DevTools evaluation: the page's own CSP still forbids scripts
        found = self.page.evaluate(
            "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
            ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' '))}))"
        )
        serious = [v for v in found if v["impact"] in SERIOUS]
        assert not serious, f"{label}: {json.dumps(serious, indent=1)}"

    def close(self) -> None:
        self.context.close()


def sign_in(visit: Visit, site: TreSite | GatewaySite, path: str, person: str) -> None:
    """Open `path` unsigned: the site sends the browser to the issuer's login page; pick `person`."""
    visit.page.goto(site.url + path)
    assert visit.page.url.startswith(f"{site.gateway_url}/dev-issuer/authorize?")
    visit.check("issuer-login")
    visit.page.get_by_role("button", name=f"Sign in as {person}", exact=True).click()
    visit.page.wait_for_url(site.url + path)


def test_a_tre_admin_approves_a_person_in_the_page(browser, site):
    visit = Visit(browser, "tre-admin")
    try:
        sign_in(visit, site, "/tre/approvals", "uk-tre-admin")
        page = visit.page
        visit.check("approvals")
        page.get_by_label("Reason for alice").fill("completed safe-researcher training")
        page.get_by_role("button", name="Approve alice", exact=True).click()
        page.wait_for_url(f"{site.url}/tre/approvals?*")
        assert page.get_by_role("status").inner_text() == "Recorded: approved alice in project alpha."
        visit.check("approvals-after")
        with site.db.read() as session:
            row = session.get(LocalDecision, ("alpha", "alice"))
            assert row is not None
            assert (row.decision, row.reason) == ("approved", "completed safe-researcher training")
            assert row.decided_by == f"{site.issuer.issuer_url}#uk-tre-admin"
            audited = session.scalars(select(AuditRecord).where(AuditRecord.action == "tre.decision")).one()
            assert (audited.actor, audited.outcome) == ("uk-tre-admin", "approved")
        response = page.goto(site.url + "/tre/policy")
        assert response is not None
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        visit.check("policy")
        page.goto(site.url + "/tre/health")
        visit.check("health")
        page.goto(site.url + "/")
        visit.check("home")
        page.goto(site.url + "/review")  # not a checker
        assert "may not see this page" in page.content()
        visit.check("refused")
        page.get_by_role("button", name="Sign out").click()
        assert page.get_by_role("heading", name="Signed out").is_visible()
        assert page.get_by_text("Signed in as").count() == 0
        visit.check("signed-out")
    finally:
        visit.close()


def test_an_output_checker_reviews_a_child_from_the_queue(browser, site, s3_store):
    hold_child(site.db, store=s3_store)
    visit = Visit(browser, "checker")
    try:
        sign_in(visit, site, "/review", "uk-tre-checker")
        page = visit.page
        visit.check("queue")
        page.get_by_role("link", name="child-1").click()
        page.wait_for_url(f"{site.url}/review/child-1")
        assert page.get_by_text("small_cell: a count of 3 is below 10").is_visible()
        flagged = page.locator("td.flagged mark")
        assert flagged.count() == 1
        assert flagged.inner_text() == "⚑ 3"
        assert page.get_by_role("button", name="Approve /out/tool.bin").count() == 0
        visit.check("child")
        page.get_by_label("Reason for /out/tool.bin").fill("an executable never leaves")
        page.get_by_role("button", name="Reject /out/tool.bin").click()
        page.wait_for_url(f"{site.url}/review/child-1?*")
        assert page.get_by_role("status").inner_text() == "Recorded: rejected /out/tool.bin."
        visit.check("child-after")
        with site.db.read() as session:
            decision = session.scalars(select(ReviewDecision)).one()
            assert (decision.checker, decision.decision) == ("uk-tre-checker", "rejected")
        page.get_by_role("link", name="Decisions").click()
        page.get_by_label("Search child, project, file, checker or reason").fill("executable")
        page.get_by_role("button", name="Search").click()
        assert page.get_by_role("cell", name="an executable never leaves").is_visible()
        visit.check("history")
    finally:
        visit.close()


def test_a_required_reason_is_asked_for_before_the_form_is_sent(browser, site):
    visit = Visit(browser, "required-reason")
    try:
        sign_in(visit, site, "/tre/approvals", "uk-tre-admin")
        visit.page.get_by_role("button", name="Reject carol", exact=True).click()
        assert visit.page.url == site.url + "/tre/approvals"  # the browser kept the form: no reason
        with site.db.read() as session:
            assert session.get(LocalDecision, ("alpha", "carol")) is None
    finally:
        visit.close()


def test_a_researcher_follows_their_tasks_at_the_gateway(browser, tmp_path):
    with gateway_site(tmp_path / "gw") as site:
        submitted = httpx.post(
            f"{site.url}/ga4gh/tes/v1/tasks",
            json={"name": "count-diabetes", "executors": [{"image": "alpine", "command": ["true"]}]},
            headers={"Authorization": f"Bearer {site.token('alice')}"},
        ).json()["id"]
        visit = Visit(browser, "researcher")
        try:
            sign_in(visit, site, "/web/tasks", "alice")
            assert visit.page.get_by_role("cell", name=submitted).is_visible()
            visit.check("tasks")
            visit.page.get_by_role("link", name=submitted).click()
            assert visit.page.get_by_role("heading", name="uk-tre: received").is_visible()
            visit.check("task")
            visit.page.get_by_role("link", name="Five Safes TES").click()
            visit.check("home")
        finally:
            visit.close()


def test_a_federation_admin_changes_the_federation_at_the_gateway(browser, tmp_path):
    with gateway_site(tmp_path / "gw") as site:
        visit = Visit(browser, "federation-admin")
        try:
            sign_in(visit, site, "/web/federation", "federation-admin")
            page = visit.page
            assert page.get_by_role("table", name="TREs").get_by_role("cell", name="uk-tre").is_visible()
            members = page.get_by_role("table", name="Projects and their members")
            assert members.get_by_role("listitem").filter(has_text="alice").count() == 1
            visit.check("federation")
            # a project whose end comes before its start: refused, with what was typed kept
            page.locator("#add-project-name").fill("gamma")
            page.locator("#add-project-title").fill("Gamma study")
            page.locator("#add-project-starts").fill("2026-05-01")
            page.locator("#add-project-ends").fill("2026-04-01")
            page.get_by_role("group", name="TREs it runs in").get_by_label("uk-tre").check()
            page.get_by_role("button", name="Add the project").click()
            assert "before it starts" in page.get_by_role("alert").inner_text()
            assert page.locator("#add-project-title").input_value() == "Gamma study"
            assert page.get_by_role("group", name="TREs it runs in").get_by_label("uk-tre").is_checked()
            visit.check("federation-refused")
            page.locator("#add-project-ends").fill("2026-12-31")
            page.get_by_role("button", name="Add the project").click()
            page.wait_for_url("**/web/federation?done=project*")
            assert page.get_by_role("status").inner_text() == "Added project gamma."
            # a member, from the keyboard: open the project, type, press Enter
            page.get_by_text("Project gamma: Gamma study").press("Enter")
            visit.check("federation-project")
            page.get_by_label("Username").and_(page.locator("#member-gamma-username")).fill("dora")
            page.keyboard.press("Enter")
            page.wait_for_url("**/web/federation?done=member*")
            assert page.get_by_role("status").inner_text() == "Added dora to project gamma."
            row = members.get_by_role("row").filter(has=page.get_by_role("cell", name="gamma", exact=True))
            assert row.get_by_role("listitem").filter(has_text="dora").count() == 1
            visit.check("federation-changed")
            with site.db.read() as session:
                audited = session.scalars(
                    select(AuditRecord.action).where(AuditRecord.object == "project:gamma")
                ).all()
            assert audited == ["admin.project.add", "admin.project.tres", "admin.member.add"]
        finally:
            visit.close()
