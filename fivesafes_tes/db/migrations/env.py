"""Alembic environment: the engine is handed in by fivesafes_tes.db.migrate."""

from alembic import context

from fivesafes_tes.db.tables import metadata

engine = context.config.attributes["engine"]

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
