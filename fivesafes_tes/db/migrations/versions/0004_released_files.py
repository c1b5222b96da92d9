"""released files

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 13:56:48.527103
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "released_files",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("child_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=1024), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["child_id"],
            ["task_children.id"],
            name=op.f("fk_released_files_child_id_task_children"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_released_files_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_released_files")),
        sa.UniqueConstraint("child_id", "name", name=op.f("uq_released_files_child_id_name")),
    )
    with op.batch_alter_table("released_files", schema=None) as batch_op:
        batch_op.create_index("ix_released_files_task_id", ["task_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("released_files", schema=None) as batch_op:
        batch_op.drop_index("ix_released_files_task_id")

    op.drop_table("released_files")
