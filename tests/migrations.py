"""Helpers for the migration tests: fill whatever tables a database has, count rows, diff the schema."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Text,
    func,
    inspect,
    select,
)
from sqlalchemy.engine import Engine

from fivesafes_tes.db.migrate import only_tables_of

# One value per column type. A foreign key and the key it refers to have the same type, so one row in
# every table, each filled with these, satisfies every foreign key.
_VALUES: tuple[tuple[type, Any], ...] = (
    (Boolean, True),
    (Integer, 1),  # also BigInteger
    (Float, 0.5),
    (DateTime, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    (Date, datetime(2026, 1, 2).date()),
    (JSON, {"kept": True}),
    (Text, "kept"),
    (String, "x"),
)


def _value(column_type: Any) -> Any:
    for kind, value in _VALUES:
        if isinstance(column_type, kind):
            return value
    raise TypeError(f"no test value for {column_type!r}")


def fill_every_table(engine: Engine, *, skip: tuple[str, ...] = ()) -> list[str]:
    """Insert one row into every table of the database (parents first); the tables filled."""
    metadata = MetaData()
    metadata.reflect(engine)
    filled = []
    with engine.begin() as connection:
        for table in metadata.sorted_tables:
            if table.name in skip or table.name.endswith("alembic_version"):
                continue
            connection.execute(table.insert().values({c.name: _value(c.type) for c in table.columns}))
            filled.append(table.name)
    return filled


def row_counts(engine: Engine, tables: list[str]) -> dict[str, int]:
    metadata = MetaData()
    metadata.reflect(engine, only=tables)
    with engine.connect() as connection:
        return {
            name: connection.scalar(select(func.count()).select_from(metadata.tables[name])) or 0
            for name in tables
        }


def schema_diff(engine: Engine, metadata: MetaData, version_table: str) -> list[Any]:
    """What autogenerate would write for this history: empty when the database matches the models.
    Only the history's own tables are compared (another history may share the database)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "version_table": version_table,
                "include_name": only_tables_of(metadata),
            },
        )
        return compare_metadata(context, metadata)


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())
