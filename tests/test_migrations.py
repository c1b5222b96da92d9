"""The gateway's Alembic history: from every revision to the newest, on SQLite and PostgreSQL, nothing
stored is lost, and the newest builds exactly the schema the table classes declare."""

from __future__ import annotations

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from fivesafes_tes.db import Database
from fivesafes_tes.db.migrate import GATEWAY, upgrade
from fivesafes_tes.db.tables import metadata
from tests.migrations import fill_every_table, row_counts, schema_diff

REVISIONS = [
    script.revision
    for script in reversed(list(ScriptDirectory(str(GATEWAY.script_location)).walk_revisions()))
]


def test_the_newest_schema_is_what_the_models_declare(database):
    assert schema_diff(database.engine, metadata, GATEWAY.version_table) == [], "write a migration"


def test_upgrading_again_changes_nothing(database):
    database.upgrade()
    database.upgrade()
    assert schema_diff(database.engine, metadata, GATEWAY.version_table) == []


@pytest.mark.parametrize("revision", REVISIONS)
def test_from_each_revision_to_the_newest_every_row_survives(empty_database_url, revision):
    db = Database(empty_database_url)
    try:
        upgrade(db.engine, revision)
        filled = fill_every_table(db.engine)
        db.upgrade()
        assert row_counts(db.engine, filled) == dict.fromkeys(filled, 1)
        assert schema_diff(db.engine, metadata, GATEWAY.version_table) == []
        with db.read() as session:
            assert session.scalar(text("SELECT version_num FROM alembic_version")) == REVISIONS[-1]
    finally:
        db.dispose()


def test_0007_keeps_memberships_casefolded_and_binds_each_to_the_one_user_with_its_name(empty_database_url):
    db = Database(empty_database_url)
    upgrade(db.engine, "0005")
    with db.write() as session:
        for user_id, subject, name in ((1, "s1", "Alice"), (2, "s2", "carol"), (3, "s3", "Carol")):
            session.execute(
                text(
                    "INSERT INTO users (id, issuer, subject, username, roles, created_at, last_seen_at) "
                    "VALUES (:id, 'i', :s, :n, '[]', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"id": user_id, "s": subject, "n": name},
            )
        session.execute(
            text(
                "INSERT INTO projects (id, name, title, created_at) "
                "VALUES (1, 'alpha', '', CURRENT_TIMESTAMP)"
            )
        )
        for name, default in (("alice", False), ("ALICE", True), ("Bob", False), ("carol", False)):
            session.execute(
                text(
                    "INSERT INTO memberships (project_id, username, is_default, created_at) "
                    "VALUES (1, :n, :d, CURRENT_TIMESTAMP)"
                ),
                {"n": name, "d": default},
            )
    db.upgrade()
    with db.read() as session:
        rows = session.execute(
            text("SELECT username, user_id, is_default FROM memberships ORDER BY username")
        ).all()
    db.dispose()
    # alice's two spellings are one membership, bound to the one user called Alice; nobody has signed in
    # as bob yet; two people present "carol", so that name waits for its first use.
    assert [tuple(r) for r in rows] == [("alice", 1, True), ("bob", None, False), ("carol", None, False)]


def test_the_history_is_one_line_ending_at_its_head():
    assert ScriptDirectory(str(GATEWAY.script_location)).get_heads() == [REVISIONS[-1]]
