"""The output checkers' queue page: children awaiting review oldest first, filtered by project and
paged, each with its held files and how many the rules flagged; a queue of 1,000 renders in under
300 ms at the server, in a fixed number of queries (no query per child)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from fivesafes_tes.agent.admin_api import create_admin_app
from fivesafes_tes.agent.loop import open_database
from fivesafes_tes.agent.pages import site_for
from fivesafes_tes.agent.tables import HeldFileRecord, LocalChild
from fivesafes_tes.auth import DevIssuer, StaticJwks, TokenValidator
from fivesafes_tes.settings import AgentSettings
from fivesafes_tes.web import WebSession

KEY = "q" * 40
CHECKER = WebSession(
    "https://idp.example", "c-1", "uk-tre-checker", frozenset({"output-checker"}), "uk-tre", "t" * 43
)
START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def queue(tmp_path):
    settings = AgentSettings(
        tre="uk-tre",
        data_dir=tmp_path,
        admin_listen="127.0.0.1:9",
        web_session_key=KEY,
        oidc_issuer="https://idp.example",
    )
    db = open_database(settings)
    issuer = DevIssuer(tmp_path / "idp", "https://idp.example")
    validator = TokenValidator(issuer.issuer_url, "fivesafes-tre", StaticJwks(issuer.jwks()), ["RS256"])
    site = site_for(settings, validator, db)
    client = TestClient(create_admin_app(db, "uk-tre", validator, site=site))
    cookies = site.cookies  # a session as the site itself would have signed it
    from starlette.responses import Response

    minted = Response()
    cookies.start_session(minted, CHECKER)
    client.cookies.set(cookies.session_name, minted.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1])
    yield client, db
    db.dispose()


def _fill(db, count: int) -> None:
    """`count` children awaiting review (every third of project beta, each with a flagged file), plus
    one already released, which is not in the queue."""
    with db.write() as session:
        for n in range(count):
            child = f"child-{n:04d}"
            session.add(
                LocalChild(
                    child_id=child,
                    task_id=f"task-{n}",
                    attempt=1,
                    stage="awaiting_review",
                    project="beta" if n % 3 == 0 else "alpha",
                    username="alice",
                    task={},
                    created_at=START + timedelta(minutes=count - n),  # the last made is the oldest
                )
            )
            for name, verdict in (
                ("/out/table.csv", "fail" if n % 3 == 0 else "pass"),
                ("step-0.stdout", "pass"),
            ):
                session.add(
                    HeldFileRecord(
                        child_id=child,
                        key=f"{child}{name}",
                        name=name,
                        kind="file",
                        size=10,
                        sha256="0" * 64,
                        verdict=verdict,
                        results=[],
                    )
                )
        session.add(
            LocalChild(
                child_id="done",
                task_id="t",
                attempt=1,
                stage="completed",
                project="alpha",
                username="a",
                task={},
            )
        )


def _rows(page: str) -> list[str]:
    return re.findall(r'<a href="/review/(child-\d+)">', page)


def test_the_queue_is_oldest_first_paged_and_filtered_by_project(queue):
    client, db = queue
    _fill(db, 120)
    first = client.get("/review")
    assert first.status_code == 200
    assert _rows(first.text)[:3] == ["child-0119", "child-0118", "child-0117"]
    assert len(_rows(first.text)) == 50
    assert "120 waiting; page 1 of 3" in first.text
    last = client.get("/review", params={"page": 3})
    assert len(_rows(last.text)) == 20
    assert _rows(last.text)[-1] == "child-0000"
    beta = client.get("/review", params={"project": "beta"})
    assert "40 waiting in project beta" in beta.text
    assert all(int(child[-4:]) % 3 == 0 for child in _rows(beta.text))
    assert '<span class="verdict-fail">1</span>' in beta.text
    assert "Next page" not in beta.text
    flagged = client.get("/review", params={"rules": "flagged"})
    assert "40 waiting with a file the rules flagged" in flagged.text
    assert all(int(child[-4:]) % 3 == 0 for child in _rows(flagged.text))
    passed = client.get("/review", params={"rules": "passed", "project": "alpha"})
    assert "80 waiting in project alpha whose files all passed the rules" in passed.text
    assert 'href="/review?project=alpha&amp;rules=passed&amp;page=2"' in passed.text
    assert client.get("/review", params={"rules": "bogus"}).status_code == 400
    assert (
        'href="/review?project=alpha&amp;page=2"' in client.get("/review", params={"project": "alpha"}).text
    )


def test_a_queue_of_a_thousand_renders_in_under_300_ms_in_three_queries(queue):
    client, db = queue
    _fill(db, 1000)
    statements: list[tuple[str, object]] = []
    event.listen(db.engine, "before_cursor_execute", lambda *args: statements.append((args[2], args[3])))
    client.get("/review")  # warm: templates compiled, connections open
    timings = []
    for _ in range(3):
        statements.clear()
        began = time.perf_counter()
        response = client.get("/review", params={"project": "alpha", "page": 7})
        timings.append(time.perf_counter() - began)
        assert response.status_code == 200
        assert len(_rows(response.text)) == 50
    selects = [(s, p) for s, p in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 3, selects
    assert min(timings) < 0.3, timings
    with db.engine.connect() as connection:
        plan = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + selects[0][0], selects[0][1]).all()
    assert "ix_agent_children_stage_created_at" in str(plan), plan
    assert "SCAN agent_held_files" not in str(plan), plan
