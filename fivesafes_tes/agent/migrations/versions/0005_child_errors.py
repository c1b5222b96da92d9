"""children count unexpected errors in their handling and when they may be tried again

Revision ID: 0005_child_errors
Revises: 0004_identity_by_subject
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_child_errors"
down_revision = "0004_identity_by_subject"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agent_children") as batch:
        batch.add_column(sa.Column("errors", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("retry_at", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agent_children") as batch:
        batch.drop_column("last_error")
        batch.drop_column("retry_at")
        batch.drop_column("errors")
