"""children keep when their task was submitted and the request crate it came as, for the TRE's own
activity record of the request (the checker's review page shows it)

Revision ID: 0010_request_record
Revises: 0009_review_queue_index
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_request_record"
down_revision = "0009_review_queue_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agent_children") as batch:
        batch.add_column(sa.Column("submitted_at", sa.String(40), nullable=False, server_default=""))
        batch.add_column(sa.Column("request", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agent_children") as batch:
        batch.drop_column("request")
        batch.drop_column("submitted_at")
