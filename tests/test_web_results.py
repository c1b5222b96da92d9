"""A researcher's task page at the gateway after a partial release: the decisions and reasons the
researcher view gives (and nothing of the withheld file), and the downloads of the released files and
of the results crate through the API's own code paths (the same authorisation, SHA-256 check and
audit), streamed as attachments; someone else gets a 404 page, audited."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from fivesafes_tes import devstack
from fivesafes_tes.audit.tables import AuditRecord
from fivesafes_tes.submission.tables import ReleasedFile
from tests.conftest import Gateway, results_store_settings
from tests.test_crate_record import KEEP, SECRET, held_run, release_keep
from tests.web import SESSION_KEY, GatewaySite, sign_in


@pytest.fixture
def released(database_url: str, tmp_path: Path, s3_endpoint: Any) -> Iterator[tuple[GatewaySite, str]]:
    """A gateway with its pages and a results store, and alice's task that uk-tre partially released."""
    port = devstack.free_port()
    gw = Gateway(
        database_url,
        tmp_path / "data",
        public_url=f"http://127.0.0.1:{port}",
        web_pages=True,
        web_session_key=SESSION_KEY,
        **results_store_settings(s3_endpoint, s3_endpoint.store().bucket),
    )
    task_id, uk, _ = held_run(gw)
    release_keep(gw, uk)
    server, thread = devstack.serve(gw.app, "127.0.0.1", port)
    assert gw.issuer is not None
    try:
        yield GatewaySite(f"http://127.0.0.1:{port}", gw.issuer, gw.db, gw.app), task_id
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        gw.close()


def test_the_task_page_shows_the_partial_release_with_the_reasons_and_nothing_withheld(released):
    site, task_id = released
    page = sign_in(site, "alice").get(f"/web/tasks/{task_id}")
    assert page.status_code == 200, page.text
    for shown in (
        "Released files",
        "/outputs/keep.csv",
        hashlib.sha256(KEEP).hexdigest(),
        "uk-checker: approved: an aggregate count",
        "Withheld, with the output checkers' reasons",
        "record-level data",
        f'href="/web/tasks/{task_id}/crate"',
    ):
        assert shown in page.text, shown
    # nothing of the withheld file: not its name, its findings, or what the task read
    for hidden in (SECRET, "person-", "record_level"):
        assert hidden not in page.text, hidden


def test_the_released_files_and_the_crate_download_as_from_the_api(released):
    site, task_id = released
    alice = sign_in(site, "alice")
    with site.db.read() as session:
        (file_id,) = session.scalars(select(ReleasedFile.id).where(ReleasedFile.task_id == task_id)).all()
    page = alice.get(f"/web/tasks/{task_id}")
    assert f'href="/web/results/{file_id}"' in page.text
    got = alice.get(f"/web/results/{file_id}")
    assert got.status_code == 200
    assert got.content == KEEP
    assert got.headers["content-disposition"] == 'attachment; filename="keep.csv"'
    assert got.headers["x-content-sha256"] == hashlib.sha256(KEEP).hexdigest()
    crate = alice.get(f"/web/tasks/{task_id}/crate")
    assert crate.status_code == 200
    assert crate.headers["content-disposition"] == f'attachment; filename="task-{task_id}-results.zip"'
    names = zipfile.ZipFile(io.BytesIO(crate.content)).namelist()
    assert any(n.endswith("keep.csv") for n in names), names
    assert not any("person-" in n for n in names), names
    with site.db.read() as session:
        audited = session.scalars(select(AuditRecord).where(AuditRecord.actor == "alice")).all()
    assert any(r.object == f"released:{file_id}" and r.outcome == "ok" for r in audited), [
        (r.action, r.object, r.outcome) for r in audited
    ]


def test_someone_else_gets_a_404_page_for_the_task_its_files_and_its_crate(released):
    site, task_id = released
    with site.db.read() as session:
        (file_id,) = session.scalars(select(ReleasedFile.id).where(ReleasedFile.task_id == task_id)).all()
    bob = sign_in(site, "bob")
    for path in (f"/web/tasks/{task_id}", f"/web/results/{file_id}", f"/web/tasks/{task_id}/crate"):
        refused = bob.get(path)
        assert refused.status_code == 404, path
        assert "text/html" in refused.headers["content-type"], path
        assert b"keep" not in refused.content, path
    assert bob.get(f"/web/results/{file_id + 1}").status_code == 404  # no such file: the same page
    with site.db.read() as session:
        denied = session.scalars(
            select(AuditRecord).where(AuditRecord.actor == "bob", AuditRecord.outcome == "denied")
        ).all()
    assert {r.object for r in denied} >= {f"task:{task_id}", f"released:{file_id}"}
