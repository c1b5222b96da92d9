"""The Alembic history builds exactly the schema the table classes declare, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from fivesafes_tes.db.tables import metadata


def test_migrations_match_the_models(database):
    with database.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), metadata)
    assert diff == [], f"write a migration for: {diff}"


def test_upgrade_is_idempotent(database):
    database.upgrade()
    database.upgrade()


def test_upgrading_keeps_every_stored_task_and_tag(database_url):
    """Upgrading from the first schema to the newest loses nothing already stored."""
    from sqlalchemy import create_engine, text

    from fivesafes_tes.db import Database
    from fivesafes_tes.db.migrate import upgrade

    if database_url.startswith("postgresql"):  # the fixture's database is already at head: start over
        engine = create_engine(database_url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()
    else:
        import pathlib

        pathlib.Path(database_url.split("///", 1)[1]).unlink()
    db = Database(database_url)
    upgrade(db.engine, "0001")
    with db.write() as session:
        session.execute(
            text(
                "INSERT INTO users (id, issuer, subject, username, roles, created_at, last_seen_at) "
                "VALUES (1, 'i', 's', 'alice', '[]', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
        session.execute(
            text(
                "INSERT INTO tasks (id, owner_id, name, state, created_at, updated_at, document, "
                "system_logs) VALUES ('t1', 1, 'kept', 'QUEUED', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, "
                "'{}', '[]')"
            )
        )
        session.execute(text("INSERT INTO task_tags (task_id, key, value) VALUES ('t1', 'k', 'v')"))
    db.upgrade()
    with db.read() as session:
        assert session.execute(text("SELECT name FROM tasks")).scalars().all() == ["kept"]
        assert session.execute(text("SELECT key || '=' || value FROM task_tags")).scalars().all() == ["k=v"]
    db.dispose()


def test_0007_keeps_memberships_casefolded_and_binds_each_to_the_one_user_with_its_name(database_url):
    from sqlalchemy import create_engine, text

    from fivesafes_tes.db import Database
    from fivesafes_tes.db.migrate import upgrade

    if database_url.startswith("postgresql"):
        engine = create_engine(database_url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()
    else:
        import pathlib

        pathlib.Path(database_url.split("///", 1)[1]).unlink()
    db = Database(database_url)
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
                "INSERT INTO projects (id, name, title, created_at) VALUES (1, 'alpha', '', CURRENT_TIMESTAMP)"
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
