"""approved files: what a TRE's checkers approved for each child, recorded before any upload

Revision ID: 0006_approved_files
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_approved_files"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approved_files",
        sa.Column("child_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=1024), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["child_id"],
            ["task_children.id"],
            name=op.f("fk_approved_files_child_id_task_children"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("child_id", "name", name=op.f("pk_approved_files")),
    )


def downgrade() -> None:
    op.drop_table("approved_files")
