"""The agent's database on SQLite and PostgreSQL: an empty one is built to the newest schema; one made by
`create_all` at each release before the agent had migrations is recognised, stamped and upgraded with
every row kept; one that matches no release, or was written by a newer version, is refused untouched.

Released schemas are the agent's table module at each commit on main that changed it (`git log
--first-parent main -- fivesafes_tes/agent/tables.py`), copied to tests/fixtures/agent_tables/. d5df51e
only reformatted 9faa319's, so it has no copy of its own.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, select, text
from sqlalchemy.engine import Engine

from fivesafes_tes.agent import schema
from fivesafes_tes.agent.tables import LocalChild, ReviewDecision
from fivesafes_tes.audit.tables import AuditHead, AuditRecord
from fivesafes_tes.db import Database
from fivesafes_tes.db.tables import metadata as gateway_metadata
from tests.migrations import fill_every_table, row_counts, schema_diff, table_names

FIXTURES = Path(__file__).parent / "fixtures" / "agent_tables"
# Each release, with the revision of the agent's history that makes the same tables.
RELEASES = {
    "bd10096": "0001_first_release",
    "9faa319": "0002_held_files",
    "da93aaa": "0003_outbox_retries",
    "197ead2": "0004_identity_by_subject",
    "5852f09": "0005_child_errors",
    "1acaad5": "0006_deployment_identity",
}
HEAD = ScriptDirectory(str(schema.HISTORY.script_location)).get_current_head()
VERSION = schema.HISTORY.version_table


def _released_tables(commit: str) -> MetaData:
    """The agent's tables as that release declared them."""
    module = types.ModuleType(f"agent_tables_{commit}")
    sys.modules[module.__name__] = module  # declarative classes resolve their annotations through it
    exec(compile((FIXTURES / f"{commit}.py.txt").read_text(), module.__name__, "exec"), module.__dict__)
    return module.AgentBase.metadata


def _create_as_released(engine: Engine, commit: str) -> None:
    """What `open_database` did at that release."""
    _released_tables(commit).create_all(engine)
    AuditRecord.metadata.create_all(engine, tables=[AuditRecord.__table__, AuditHead.__table__])


def _version(db: Database) -> str | None:
    with db.read() as session:
        return session.scalar(text(f"SELECT version_num FROM {VERSION}"))


@pytest.fixture
def db(empty_database_url):
    database = Database(empty_database_url)
    yield database
    database.dispose()


def test_every_release_has_its_copy_and_the_history_is_one_line():
    assert sorted(p.name.split(".")[0] for p in FIXTURES.iterdir()) == sorted(RELEASES)
    assert ScriptDirectory(str(schema.HISTORY.script_location)).get_heads() == [HEAD]


def test_an_empty_database_is_built_to_the_newest_schema(db):
    schema.upgrade(db.engine)
    schema.upgrade(db.engine)
    assert _version(db) == HEAD
    assert schema_diff(db.engine, schema.metadata, VERSION) == [], "write a migration of the agent's"


@pytest.mark.parametrize("commit", RELEASES)
def test_a_database_made_at_each_release_is_recognised_and_upgraded_with_its_rows(db, commit):
    _create_as_released(db.engine, commit)
    filled = fill_every_table(db.engine)
    with db.write() as session:  # ended children: nothing of theirs is asked again (see below)
        session.execute(text("UPDATE agent_children SET active = false"))

    assert schema.recognise(db.engine) == RELEASES[commit]
    schema.upgrade(db.engine)

    assert _version(db) == HEAD
    assert row_counts(db.engine, filled) == dict.fromkeys(filled, 1)
    assert schema_diff(db.engine, schema.metadata, VERSION) == []
    with db.read() as session:  # and the agent reads what it kept, with the new columns' defaults
        child = session.scalars(select(LocalChild)).one()
    assert (child.child_id, child.task, child.attempts) == ("x", {"kept": True}, 1)


def test_review_decisions_made_before_people_had_subjects_are_asked_again_while_under_review(db):
    _create_as_released(db.engine, "da93aaa")
    fill_every_table(db.engine)  # child "x", active, with one decision by checker "x"
    with db.write() as session:
        session.execute(
            text(
                "INSERT INTO agent_children (child_id, task_id, attempt, stage, project, username, task, "
                "next_seq, active, created_at, updated_at) SELECT 'ended', task_id, attempt, 'released', "
                "project, username, task, next_seq, false, created_at, updated_at FROM agent_children"
            )
        )
        session.execute(
            text(
                "INSERT INTO agent_review_decisions (child_id, key, checker, decision, reason, decided_at) "
                "SELECT 'ended', key, 'carol', decision, reason, decided_at FROM agent_review_decisions"
            )
        )
    schema.upgrade(db.engine)
    with db.read() as session:
        kept = [
            (d.child_id, d.checker_issuer, d.checker_subject) for d in session.scalars(select(ReviewDecision))
        ]
    assert kept == [("ended", "", "carol")]


def test_a_database_that_matches_no_release_is_refused_and_left_as_it_was(db):
    _create_as_released(db.engine, "1acaad5")
    with db.write() as session:
        session.execute(text("ALTER TABLE agent_children ADD COLUMN colour VARCHAR(8)"))
    with pytest.raises(schema.SchemaRefused, match="no release made") as refused:
        schema.upgrade(db.engine)
    assert (
        "Nearest is 0006_deployment_identity: missing nothing, unexpected ['agent_children.colour']"
        in str(refused.value)
    )
    assert VERSION not in table_names(db.engine)


def test_a_database_written_by_a_newer_version_is_refused(db):
    schema.upgrade(db.engine)
    with db.write() as session:
        session.execute(text(f"UPDATE {VERSION} SET version_num = '0099_from_the_future'"))
    with pytest.raises(schema.SchemaRefused, match="made by a newer fivesafes-tes"):
        schema.upgrade(db.engine)


def test_the_agent_and_the_gateway_share_one_database(db):
    """Each history keeps its own version table and sees only its own tables; the audit chain is one."""
    db.upgrade()
    schema.upgrade(db.engine)
    db.upgrade()
    assert schema_diff(db.engine, gateway_metadata, "alembic_version") == []
    assert schema_diff(db.engine, schema.metadata, VERSION) == []
    assert _version(db) == HEAD


def test_the_agent_does_not_start_on_a_database_it_cannot_upgrade(tmp_path):
    from fivesafes_tes.agent.loop import CannotStart, open_database
    from fivesafes_tes.settings import AgentSettings

    settings = AgentSettings(tre="uk-tre", data_dir=tmp_path)
    made = Database(settings.effective_database_url)
    _create_as_released(made.engine, "1acaad5")
    with made.write() as session:
        session.execute(text("ALTER TABLE agent_children ADD COLUMN colour VARCHAR(8)"))
    made.dispose()
    with pytest.raises(CannotStart, match="FIVESAFES_AGENT_DATABASE_URL: the agent's database has tables no"):
        open_database(settings)
