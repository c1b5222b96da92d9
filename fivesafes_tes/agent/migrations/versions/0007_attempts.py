"""children count the attempts the agent took on while their task acted, so one is not tried for ever

Revision ID: 0007_attempts
Revises: 0006_deployment_identity
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_attempts"
down_revision = "0006_deployment_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agent_children") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("agent_children") as batch:
        batch.drop_column("attempts")
