"""people by their token's issuer and subject: submitters, TRE admins' approvals, output checkers

Revision ID: 0004_identity_by_subject
Revises: 0003_outbox_retries
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_identity_by_subject"
down_revision = "0003_outbox_retries"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agent_children") as batch:
        batch.add_column(sa.Column("submitter_issuer", sa.String(512), nullable=False, server_default=""))
        batch.add_column(sa.Column("submitter_subject", sa.String(255), nullable=False, server_default=""))
    # An approval made before names a person by name only: it binds to the subject it first applies to.
    # Who decided was a name then; it stays in decided_by and becomes the name shown.
    with op.batch_alter_table("agent_decisions") as batch:
        batch.add_column(sa.Column("person_issuer", sa.String(512), nullable=True))
        batch.add_column(sa.Column("person_subject", sa.String(255), nullable=True))
        batch.add_column(sa.Column("decided_by_name", sa.String(255), nullable=False, server_default=""))
        batch.alter_column("decided_by", existing_type=sa.String(255), type_=sa.String(1024))
    op.execute("UPDATE agent_decisions SET decided_by_name = decided_by")
    with op.batch_alter_table("agent_review_decisions") as batch:
        batch.add_column(sa.Column("checker_issuer", sa.String(512), nullable=False, server_default=""))
        batch.add_column(sa.Column("checker_subject", sa.String(255), nullable=False, server_default=""))
    # A review decision names its checker by name only, which the two-person and no-self-approval rules
    # no longer accept: on work still under review it is asked again (nothing is released on it); on
    # ended work it stays the record, under the name as subject and an empty issuer.
    op.execute(
        "DELETE FROM agent_review_decisions WHERE child_id IN "
        "(SELECT child_id FROM agent_children WHERE active = true)"
    )
    op.execute("UPDATE agent_review_decisions SET checker_subject = checker")
    with op.batch_alter_table("agent_review_decisions") as batch:
        batch.drop_constraint("pk_agent_review_decisions", type_="primary")
        batch.create_primary_key(
            "pk_agent_review_decisions", ["child_id", "key", "checker_issuer", "checker_subject"]
        )


def downgrade() -> None:
    with op.batch_alter_table("agent_review_decisions") as batch:
        batch.drop_constraint("pk_agent_review_decisions", type_="primary")
        batch.create_primary_key("pk_agent_review_decisions", ["child_id", "key", "checker"])
        batch.drop_column("checker_subject")
        batch.drop_column("checker_issuer")
    with op.batch_alter_table("agent_decisions") as batch:
        batch.alter_column("decided_by", existing_type=sa.String(1024), type_=sa.String(255))
        batch.drop_column("decided_by_name")
        batch.drop_column("person_subject")
        batch.drop_column("person_issuer")
    with op.batch_alter_table("agent_children") as batch:
        batch.drop_column("submitter_subject")
        batch.drop_column("submitter_issuer")
