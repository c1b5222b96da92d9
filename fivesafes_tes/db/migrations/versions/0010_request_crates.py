"""tasks submitted as Five Safes request crates keep the crate's metadata and what intake checked

Revision ID: 0010_request_crates
Revises: 0009_lost_leases
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_request_crates"
down_revision = "0009_lost_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "request_crates",
        sa.Column("task_id", sa.String(36), sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("external_identifier", sa.String(1024), nullable=False),
        sa.Column("zip_sha512", sa.String(128), nullable=False),
        sa.Column("zip_size", sa.BigInteger(), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("metadata_doc", sa.JSON(), nullable=False),
        sa.Column("checks", sa.JSON(), nullable=False),
        sa.Column("stripped_assess_actions", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("request_crates")
