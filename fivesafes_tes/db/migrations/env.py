"""Alembic environment of the gateway's history; the engine is handed in by fivesafes_tes.db.migrate."""

from fivesafes_tes.db.migrate import run_in_env
from fivesafes_tes.db.tables import metadata

run_in_env(metadata)
