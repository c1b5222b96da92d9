"""deliveries: per child when the next attempt is due and how many were made; per released file
where it was delivered

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task_children", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivery_due_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("delivery_attempts", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch_op.create_index("ix_task_children_delivery_due_at", ["delivery_due_at"], unique=False)
    with op.batch_alter_table("released_files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivered_url", sa.String(length=2048), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("released_files", schema=None) as batch_op:
        batch_op.drop_column("delivered_url")
    with op.batch_alter_table("task_children", schema=None) as batch_op:
        batch_op.drop_index("ix_task_children_delivery_due_at")
        batch_op.drop_column("delivery_attempts")
        batch_op.drop_column("delivery_due_at")
