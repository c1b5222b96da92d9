"""TRE policies: what each TRE's agent publishes it will run, checked at submission

Revision ID: 0008_tre_policies
Revises: 0007_identity_by_subject
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_tre_policies"
down_revision = "0007_identity_by_subject"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tre_policies",
        sa.Column("tre_id", sa.Integer(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tre_id"], ["tres.id"], name=op.f("fk_tre_policies_tre_id_tres"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tre_id", name=op.f("pk_tre_policies")),
    )


def downgrade() -> None:
    op.drop_table("tre_policies")
