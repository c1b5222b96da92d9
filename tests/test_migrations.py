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
