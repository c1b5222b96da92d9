"""The agent's database schema: its Alembic history, and how a database made before that history
existed (by `create_all`, up to release 1acaad5) is recognised and brought into it.

The agent's history keeps its own version table, so its database may also hold the gateway's tables
(the development stack may share one); each history looks only at its own tables.
"""

from __future__ import annotations

from pathlib import Path

from alembic.util.exc import CommandError
from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import Engine

from fivesafes_tes.agent.tables import AgentBase
from fivesafes_tes.audit.tables import AuditHead, AuditRecord
from fivesafes_tes.db import migrate
from fivesafes_tes.db.base import NAMING, Base

HISTORY = migrate.History(Path(__file__).parent / "migrations", version_table="agent_alembic_version")

metadata = MetaData(naming_convention=NAMING)
"""Every table the agent's history makes: the agent's own and its audit chain."""
_AUDIT = (Base.metadata.tables[m.__tablename__] for m in (AuditRecord, AuditHead))
for _table in (*AgentBase.metadata.sorted_tables, *_AUDIT):
    _table.to_metadata(metadata)

# The agent's tables as `create_all` made them at each release that changed them before the history
# began, as the columns each revision of the history adds; that revision makes the same tables.
_ADDED: tuple[tuple[str, dict[str, str]], ...] = (
    (
        "0001_first_release",
        {
            "agent_children": "child_id task_id attempt stage project username task next_seq result active "
            "created_at updated_at",
            "agent_outbox": "child_id attempt seq stage message report sent",
            "agent_decisions": "project username decision reason decided_by decided_at pushed",
            "agent_projects": "name title starts_on ends_on members",
        },
    ),
    (
        "0002_held_files",
        {
            "agent_held_files": "child_id key name kind size sha256 verdict results",
            "agent_review_decisions": "child_id key checker decision reason decided_at",
        },
    ),
    ("0003_outbox_retries", {"agent_outbox": "not_before refusals"}),
    (
        "0004_identity_by_subject",
        {
            "agent_children": "submitter_issuer submitter_subject",
            "agent_decisions": "person_issuer person_subject decided_by_name",
            "agent_review_decisions": "checker_issuer checker_subject",
        },
    ),
    ("0005_child_errors", {"agent_children": "errors retry_at last_error"}),
    ("0006_deployment_identity", {"agent_identity": "deployment created_at"}),
)


def _released() -> list[tuple[str, frozenset[str]]]:
    """Each release's columns as `table.column`, oldest first, with the revision that matches it."""
    columns: set[str] = set()
    releases = []
    for revision, added in _ADDED:
        columns |= {f"{table}.{column}" for table, names in added.items() for column in names.split()}
        releases.append((revision, frozenset(columns)))
    return releases


class SchemaRefused(RuntimeError):
    """The agent's database is one this version cannot bring up to date; nothing in it was changed."""


def upgrade(engine: Engine) -> None:
    """Bring the agent's database to the newest revision: an empty one is created, one made before the
    history began is recognised by its columns and stamped with the matching revision first, and one
    that matches no release (or was made by a newer version) is refused."""
    tables = set(inspect(engine).get_table_names())
    if HISTORY.version_table not in tables and any(t.startswith("agent_") for t in tables):
        migrate.stamp(engine, recognise(engine), HISTORY)
    try:
        migrate.upgrade(engine, "head", HISTORY)
    except CommandError as exc:  # a revision this version does not know: a newer agent wrote it
        raise SchemaRefused(
            f"the agent's database is at a revision this version does not know ({exc}); it was made by a "
            "newer fivesafes-tes: run that version, or restore a backup made before it"
        ) from exc


def recognise(engine: Engine) -> str:
    """The revision whose tables a database made by `create_all` has, or SchemaRefused naming how it
    differs from the nearest release."""
    inspector = inspect(engine)
    found = frozenset(
        f"{table}.{column['name']}"
        for table in inspector.get_table_names()
        if table.startswith("agent_")
        for column in inspector.get_columns(table)
    )
    releases = _released()
    for revision, columns in releases:
        if columns == found:
            return revision
    revision, nearest = min(releases, key=lambda release: len(release[1] ^ found))
    missing, extra = sorted(nearest - found), sorted(found - nearest)
    raise SchemaRefused(
        "the agent's database has tables no release made, so it cannot be upgraded safely; it was not "
        f"changed. Nearest is {revision}: missing {missing or 'nothing'}, unexpected {extra or 'nothing'}. "
        "Restore it from a backup, or move it aside to start with an empty one."
    )
