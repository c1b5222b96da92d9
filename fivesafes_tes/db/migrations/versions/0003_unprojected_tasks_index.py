"""partial index for tasks stored before projects existed (visible to their owner only)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_tasks_unprojected_owner_id_id",
        "tasks",
        ["owner_id", "id"],
        unique=False,
        sqlite_where=sa.text("project_id IS NULL"),
        postgresql_where=sa.text("project_id IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_unprojected_owner_id_id", table_name="tasks")
