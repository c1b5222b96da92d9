"""held files with their rule results, and output checkers' decisions on them

Revision ID: 0002_held_files
Revises: 0001_first_release
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_held_files"
down_revision = "0001_first_release"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_held_files",
        sa.Column("child_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("name", sa.String(length=1024), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("child_id", "key", name=op.f("pk_agent_held_files")),
    )
    op.create_table(
        "agent_review_decisions",
        sa.Column("child_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("checker", sa.String(length=255), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("child_id", "key", "checker", name=op.f("pk_agent_review_decisions")),
    )


def downgrade() -> None:
    op.drop_table("agent_review_decisions")
    op.drop_table("agent_held_files")
