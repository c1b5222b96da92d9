"""federation: TREs, projects, members, decisions; per-TRE children and their events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 12:59:19.888033
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("title", sa.String(length=255), nullable=False),
        sa.Column("starts_on", sa.Date(), nullable=True),
        sa.Column("ends_on", sa.Date(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
        sa.UniqueConstraint("name", name=op.f("uq_projects_name")),
    )
    op.create_table(
        "tres",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("title", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tres")),
        sa.UniqueConstraint("name", name=op.f("uq_tres_name")),
    )
    op.create_table(
        "memberships",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_memberships_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "username", name=op.f("pk_memberships")),
    )
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.create_index("ix_memberships_username", ["username"], unique=False)

    op.create_table(
        "project_tres",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("tre_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_project_tres_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tre_id"], ["tres.id"], name=op.f("fk_project_tres_tre_id_tres"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("project_id", "tre_id", name=op.f("pk_project_tres")),
    )
    op.create_table(
        "tre_decisions",
        sa.Column("tre_id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("decided_by", sa.String(length=255), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_tre_decisions_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tre_id"], ["tres.id"], name=op.f("fk_tre_decisions_tre_id_tres"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tre_id", "project_id", "username", name=op.f("pk_tre_decisions")),
    )
    op.create_table(
        "task_children",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("tre_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_acknowledged", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("system_logs", sa.JSON(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_task_children_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["tre_id"], ["tres.id"], name=op.f("fk_task_children_tre_id_tres")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_children")),
        sa.UniqueConstraint("task_id", "tre_id", name=op.f("uq_task_children_task_id_tre_id")),
    )
    with op.batch_alter_table("task_children", schema=None) as batch_op:
        batch_op.create_index(
            "ix_task_children_tre_id_lease_expires_at", ["tre_id", "lease_expires_at"], unique=False
        )
        batch_op.create_index("ix_task_children_tre_id_stage", ["tre_id", "stage"], unique=False)

    op.create_table(
        "child_events",
        sa.Column("child_id", sa.String(length=36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["child_id"],
            ["task_children.id"],
            name=op.f("fk_child_events_child_id_task_children"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("child_id", "attempt", "seq", name=op.f("pk_child_events")),
    )
    # A plain ADD COLUMN, never a batch rebuild of `tasks`: on SQLite a rebuild drops the table, and
    # with foreign keys on that cascades into task_tags. SQLite allows an inline REFERENCES here.
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "ALTER TABLE tasks ADD COLUMN project_id INTEGER "
            "CONSTRAINT fk_tasks_project_id_projects REFERENCES projects (id)"
        )
    else:
        op.add_column("tasks", sa.Column("project_id", sa.Integer(), nullable=True))
        op.create_foreign_key(
            op.f("fk_tasks_project_id_projects"), "tasks", "projects", ["project_id"], ["id"]
        )
    op.create_index("ix_tasks_project_id_id", "tasks", ["project_id", "id"], unique=False)
    op.create_index("ix_tasks_project_id_state_id", "tasks", ["project_id", "state", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_tasks_project_id_projects"), type_="foreignkey")
        batch_op.drop_index("ix_tasks_project_id_state_id")
        batch_op.drop_index("ix_tasks_project_id_id")
        batch_op.drop_column("project_id")

    op.drop_table("child_events")
    with op.batch_alter_table("task_children", schema=None) as batch_op:
        batch_op.drop_index("ix_task_children_tre_id_stage")
        batch_op.drop_index("ix_task_children_tre_id_lease_expires_at")

    op.drop_table("task_children")
    op.drop_table("tre_decisions")
    op.drop_table("project_tres")
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.drop_index("ix_memberships_username")

    op.drop_table("memberships")
    op.drop_table("tres")
    op.drop_table("projects")
