"""outbox events carry when they may be sent and how often the gateway refused them

Revision ID: 0003_outbox_retries
Revises: 0002_held_files
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_outbox_retries"
down_revision = "0002_held_files"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agent_outbox") as batch:
        batch.add_column(sa.Column("not_before", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("refusals", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("agent_outbox") as batch:
        batch.drop_column("refusals")
        batch.drop_column("not_before")
