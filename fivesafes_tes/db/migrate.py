"""Run Alembic migrations from code, so the gateway, the agent and the tests need no alembic.ini.

Two histories use this: the gateway's (`fivesafes_tes/db/migrations`) and the agent's
(`fivesafes_tes/agent/migrations`). Each keeps its own version table and looks only at its own tables,
so both can live in one database (the development stack may share one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection, Engine

from fivesafes_tes.db.engine import MIGRATIONS


@dataclass(frozen=True)
class History:
    """One Alembic history: where its revisions are and which table records how far a database is."""

    script_location: Path
    version_table: str = "alembic_version"


GATEWAY = History(MIGRATIONS)


class ForeignKeysBroken(RuntimeError):
    """A migration left rows whose foreign keys point nowhere; the upgrade was rolled back."""


def alembic_config(engine: Engine, history: History = GATEWAY) -> Config:
    config = Config()
    config.set_main_option("script_location", str(history.script_location))
    config.attributes["engine"] = engine
    config.attributes["version_table"] = history.version_table
    return config


def upgrade(engine: Engine, revision: str = "head", history: History = GATEWAY) -> None:
    command.upgrade(alembic_config(engine, history), revision)


def stamp(engine: Engine, revision: str, history: History = GATEWAY) -> None:
    """Record that the database is at `revision` without running anything."""
    command.stamp(alembic_config(engine, history), revision)


def run_in_env(metadata: MetaData) -> None:
    """The body of every env.py here: run the migrations on the engine handed in by `alembic_config`.

    On SQLite, a batch ALTER copies a table, drops the original and renames the copy; with foreign
    keys enforced, that drop deletes every row referring to it through ON DELETE CASCADE. So foreign
    keys are off while migrating, and checked once at the end instead: a violation rolls it all back.
    Only this history's tables are compared, so autogenerate never proposes dropping the other's.
    """
    engine: Engine = context.config.attributes["engine"]
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            _sqlite_foreign_keys(connection, on=False)
        try:
            context.configure(
                connection=connection,
                target_metadata=metadata,
                version_table=context.config.attributes["version_table"],
                render_as_batch=True,
                transactional_ddl=True,  # SQLite's DDL is transactional too: one upgrade, one transaction
                include_name=only_tables_of(metadata),
            )
            with context.begin_transaction():
                context.run_migrations()
                if sqlite:
                    broken = connection.execute(text("PRAGMA foreign_key_check")).all()
                    if broken:
                        raise ForeignKeysBroken(
                            f"rows left referring to nothing (table, rowid, parent): {broken}"
                        )
        finally:
            if sqlite:
                _sqlite_foreign_keys(connection, on=True)


def only_tables_of(metadata: MetaData) -> Callable[[str | None, str, object], bool]:
    """An autogenerate `include_name` filter: this metadata's tables, never another history's."""
    return lambda name, kind, _parent: kind != "table" or name in metadata.tables


def _sqlite_foreign_keys(connection: Connection, *, on: bool) -> None:
    """Set SQLite's foreign_keys pragma, which is ignored inside a transaction: so on the driver's
    connection, outside SQLAlchemy's (which would begin one first)."""
    connection.connection.driver_connection.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")  # type: ignore[union-attr]
