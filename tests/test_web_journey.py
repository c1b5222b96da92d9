"""The journey of issue 13's "Done when", in Debian's chromium (headless, through Playwright) against
the embedded federation with the Docker executor: bob submits by the CLI; uk-tre's admin approves his
project and him in the TRE's page; the task runs and its two tables are held; a checker finds the
small cell the small-cell rule flagged highlighted in the preview, rejects that table with a reason
and approves the rest; a second checker completes the two-person review the TRE's policy requires;
and bob's page at the gateway shows the partial release with the reason, and downloads exactly the
approved files. Every page is screenshotted into test-artifacts/web/ and checked for CSP violations
and serious axe-core findings (`Visit.check`). Under CI=true a missing Docker engine or chromium fails
the run (`images.docker_client`, the `browser` fixture)."""

from __future__ import annotations

import contextlib
import json
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from fivesafes_tes import devstack
from fivesafes_tes.cli import app as cli
from fivesafes_tes.devimages import BUSYBOX_IMAGE
from fivesafes_tes.submission.tables import ReleasedFile
from tests import images
from tests.conftest import postgres_database
from tests.test_web_browser import Visit, browser, sign_in

docker_client = images.docker_client
__all__ = ["browser", "docker_client"]  # fixtures, used by name

TRE = "uk-tre"
SMALL = b"region,n\nnorth,3\nsouth,120\n"  # 3 people in the north: below uk-tre's threshold of 10
SAFE = b"region,n_patients\nnorth,120\nsouth,95\n"
SCRIPT = (
    "mkdir -p /data/out && printf 'region,n\\nnorth,3\\nsouth,120\\n' > /data/out/small.csv"
    " && printf 'region,n_patients\\nnorth,120\\nsouth,95\\n' > /data/out/safe.csv"
)
REASON = "a count of 3 in the north could identify people"


@dataclass
class Pages:
    """Where `sign_in` finds a site's pages and the issuer's login page."""

    url: str
    gateway_url: str


@pytest.fixture(params=["sqlite", "postgres"])
def stack(request: pytest.FixtureRequest, tmp_path: Path, docker_client: Any) -> Iterator[devstack.DevStack]:
    """The embedded federation, its gateway and both agents on SQLite files, or each on its own
    PostgreSQL database."""
    images.ensure_busybox_image(docker_client)
    with contextlib.ExitStack() as databases:
        gateway_url, agent_urls = None, {}
        if request.param == "postgres":
            gateway_url = databases.enter_context(postgres_database())
            agent_urls = {
                tre: databases.enter_context(postgres_database()) for tre in devstack.DEV_FEDERATION["tres"]
            }
        with devstack.start(
            tmp_path / "data",
            agents=True,
            executor="docker",
            report_granularity_s=0,
            required_approvals=2,
            database_url=gateway_url,
            agent_database_urls=agent_urls,
        ) as running:
            dialects = {running.db.engine.dialect.name} | {
                agent.db.engine.dialect.name for agent in running.agents.values()
            }
            assert dialects == {"postgresql" if request.param == "postgres" else "sqlite"}
            yield running


def _wait(what: str, probe: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout} s")


@pytest.mark.slow
def test_a_researchers_task_through_approval_two_person_review_and_a_partial_release(
    browser: Any, stack: devstack.DevStack, tmp_path: Path
) -> None:
    gateway = Pages(f"{stack.url}/web", stack.url)
    tre = Pages(stack.tre_url(TRE), stack.url)
    token = stack.token("bob", "researcher")
    api = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    # bob submits by the CLI (his project, cardio, runs in uk-tre only, and no one there decided on it)
    task_file = tmp_path / "task.json"
    task_file.write_text(
        json.dumps(
            {
                "name": "cardio counts",
                "executors": [{"image": BUSYBOX_IMAGE, "command": ["sh", "-c", SCRIPT]}],
                "outputs": [
                    {"path": f"/data/out/{name}", "url": f"s3://results/{name}"}
                    for name in ("small.csv", "safe.csv")
                ],
            }
        )
    )
    submitted = CliRunner().invoke(
        cli, ["submit", str(task_file), "--token", token], env={"FIVESAFES_TES_URL": stack.url}
    )
    assert submitted.exit_code == 0, submitted.output
    task_id = submitted.stdout.strip()

    def stage() -> str:
        task = api.get(f"/ga4gh/tes/v1/tasks/{task_id}", params={"view": "FULL"}).json()
        return str(((task.get("logs") or [{}])[0].get("metadata") or {}).get("stage", ""))

    _wait("bob's task waits for uk-tre's admins", lambda: stage() == "awaiting_tre_approval")

    # uk-tre's admin approves the project and bob in the TRE's page
    admin = Visit(browser, "journey-tre-admin")
    try:
        sign_in(admin, tre, "/tre/approvals", f"{TRE}-admin")
        admin.check("approvals")
        for label, reason in (("project cardio", "ethics approved"), ("bob", "accredited researcher")):
            admin.page.get_by_label(f"Reason for {label}").fill(reason)
            admin.page.get_by_role("button", name=f"Approve {label}", exact=True).click()
            admin.page.wait_for_url(f"{tre.url}/tre/approvals?*")
        admin.check("approvals-after")
    finally:
        admin.close()

    # the task runs; its outputs are held for review
    review = httpx.Client(
        base_url=tre.url,
        headers={"Authorization": f"Bearer {stack.tre_token(f'{TRE}-checker', 'output-checker', TRE)}"},
        timeout=30,
    )
    (child,) = _wait("bob's outputs are held", lambda: review.get("/review/v1/children").json(), timeout=120)
    held = sorted(f["name"] for f in child["files"])
    assert {"/data/out/small.csv", "/data/out/safe.csv"} <= set(held), held
    rest = [name for name in held if name != "/data/out/small.csv"]

    # the first checker finds the small cell highlighted, rejects that table and approves the rest
    first = Visit(browser, "journey-checker")
    try:
        sign_in(first, tre, "/review", f"{TRE}-checker")
        first.check("queue")
        first.page.get_by_role("link", name=child["child_id"]).click()
        first.page.wait_for_url(f"{tre.url}/review/{child['child_id']}")
        flagged = first.page.get_by_role("region", name="Preview of /data/out/small.csv").locator(
            "td.flagged mark"
        )
        assert flagged.count() == 1
        assert flagged.inner_text() == "⚑ 3"
        assert (
            first.page.get_by_role("region", name="Preview of /data/out/safe.csv")
            .locator("td.flagged")
            .count()
            == 0
        )
        # the request's activity crate says who let it run here, and why
        crate = first.page.get_by_role("table", name="Actions the crate records")
        sign_off = crate.get_by_role("row").filter(has_text=f"Sign-off by {TRE}")
        assert "approved by uk-tre-admin (ethics approved)" in sign_off.inner_text()
        assert "approved by uk-tre-admin (accredited researcher)" in sign_off.inner_text()
        assert sign_off.locator(".status-completed").inner_text() == "completed"
        first.check("child")
        _decide(first, tre, child["child_id"], "/data/out/small.csv", "Reject", REASON)
        for name in rest:
            _decide(
                first, tre, child["child_id"], name, "Approve", "aggregate counts, all above the threshold"
            )
        assert first.page.get_by_text("Each file needs 2 approvals by different checkers").is_visible()
        approvals = first.page.locator("section.held dd").filter(has_text=" of 2")
        assert sorted(approvals.all_inner_texts()) == ["0 of 2"] + ["1 of 2"] * len(rest)
        first.check("child-after")
    finally:
        first.close()
    assert stage() == "awaiting_review"  # one checker's approvals are not enough in uk-tre

    # the second checker completes the two-person review
    second = Visit(browser, "journey-checker-2")
    try:
        sign_in(second, tre, f"/review/{child['child_id']}", f"{TRE}-checker-2")
        for name in rest:
            _decide(second, tre, child["child_id"], name, "Approve", "checked: aggregate counts only")
        second.check("child-after")
    finally:
        second.close()

    _wait("uk-tre partially released bob's outputs", lambda: stage() == "partially_released")

    # bob's page shows the partial release with the reason, and downloads exactly the approved files
    assert stack.db is not None
    with stack.db.read() as session:
        released = {
            f.name: f.id for f in session.scalars(select(ReleasedFile).where(ReleasedFile.task_id == task_id))
        }
    assert sorted(released) == rest
    researcher = Visit(browser, "journey-researcher")
    try:
        sign_in(researcher, gateway, f"/tasks/{task_id}", "bob")
        page = researcher.page
        assert page.get_by_role("heading", name=f"{TRE}: partially released").is_visible()
        assert page.get_by_role("listitem").filter(has_text=REASON).count() >= 1
        released_table = page.get_by_role("table", name="Released files")
        assert released_table.get_by_text("small.csv").count() == 0  # (the command names it: bob wrote it)
        researcher.check("task")
        links = released_table.get_by_role("link")
        assert sorted(links.all_inner_texts()) == rest
        with page.expect_download() as download:
            page.get_by_role("link", name="/data/out/safe.csv").click()
        assert download.value.suggested_filename == "safe.csv"
        assert Path(download.value.path()).read_bytes() == SAFE
        with page.expect_download() as crate:
            page.get_by_role("link", name="Download the results crate").click()
        assert crate.value.suggested_filename == f"task-{task_id}-results.zip"
        with zipfile.ZipFile(crate.value.path()) as bag:
            payload = {n: bag.read(n) for n in bag.namelist() if n.endswith(".csv")}
        assert list(payload.values()) == [SAFE], sorted(payload)  # the released table, and not the other
        for file_id in (*released.values(), max(released.values()) + 1):
            got = researcher.context.request.get(f"{gateway.url}/results/{file_id}")
            assert got.status == (200 if file_id in released.values() else 404), file_id
            assert b"north,3" not in got.body()
    finally:
        researcher.close()


def _decide(visit: Visit, tre: Pages, child_id: str, name: str, decision: str, reason: str) -> None:
    visit.page.get_by_label(f"Reason for {name}").fill(reason)
    visit.page.get_by_role("button", name=f"{decision} {name}", exact=True).click()
    visit.page.wait_for_url(f"{tre.url}/review/{child_id}?*")
    done = {"Approve": "approved", "Reject": "rejected"}[decision]
    assert visit.page.get_by_role("status").inner_text() == f"Recorded: {done} {name}."
