"""children count the leases they lost while their task acted, so one that kills its agent is given up

Revision ID: 0009_lost_leases
Revises: 0008_tre_policies
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_lost_leases"
down_revision = "0008_tre_policies"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task_children") as batch:
        batch.add_column(sa.Column("lost_leases", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("task_children") as batch:
        batch.drop_column("lost_leases")
