"""the agent's deployment id, labelled on everything it makes in the container engine

Revision ID: 0006_deployment_identity
Revises: 0005_child_errors
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_deployment_identity"
down_revision = "0005_child_errors"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_identity",
        sa.Column("deployment", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("deployment", name=op.f("pk_agent_identity")),
    )


def downgrade() -> None:
    op.drop_table("agent_identity")
