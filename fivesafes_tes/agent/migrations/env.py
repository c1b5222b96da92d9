"""Alembic environment of the agent's history; the engine is handed in by fivesafes_tes.db.migrate."""

from fivesafes_tes.agent.schema import metadata
from fivesafes_tes.db.migrate import run_in_env

run_in_env(metadata)
