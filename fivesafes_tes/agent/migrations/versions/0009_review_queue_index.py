"""children are indexed by stage and age, so the checkers' queue page is one index range scan

Revision ID: 0009_review_queue_index
Revises: 0008_relay_runs
"""

from alembic import op

revision = "0009_review_queue_index"
down_revision = "0008_relay_runs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_agent_children_stage_created_at", "agent_children", ["stage", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_agent_children_stage_created_at", table_name="agent_children")
