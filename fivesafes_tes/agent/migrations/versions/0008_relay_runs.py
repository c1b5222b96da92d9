"""the TES relay executor's runs, by the remote id its TES server gave them, for re-attaching after a restart

Revision ID: 0008_relay_runs
Revises: 0007_attempts
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_relay_runs"
down_revision = "0007_attempts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_relay_runs",
        sa.Column("child_id", sa.String(length=36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("remote_id", sa.String(length=255), nullable=True),
        sa.Column("deadline", sa.Float(), nullable=False),
        sa.Column("max_bytes", sa.BigInteger(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("child_id", name=op.f("pk_agent_relay_runs")),
    )


def downgrade() -> None:
    op.drop_table("agent_relay_runs")
