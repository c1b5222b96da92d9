"""people by issuer and subject: memberships casefolded and bound to the user who holds their name

Revision ID: 0007_identity_by_subject
Revises: 0006_approved_files
"""

import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0007_identity_by_subject"
down_revision = "0006_approved_files"
branch_labels = None
depends_on = None


def _key(username: str) -> str:
    # fivesafes_tes.auth.name_key as of this revision, copied so later changes cannot rewrite history
    return unicodedata.normalize("NFKC", username).casefold()


def upgrade() -> None:
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.add_column(sa.Column("user_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(op.f("fk_memberships_user_id_users"), "users", ["user_id"], ["id"])
        batch_op.create_index("ix_memberships_user_id", ["user_id"], unique=False)
    connection = op.get_bind()
    members = sa.table(
        "memberships",
        sa.column("project_id", sa.Integer),
        sa.column("username", sa.String),
        sa.column("user_id", sa.Integer),
        sa.column("is_default", sa.Boolean),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    users: dict[str, list[int]] = {}
    for user_id, username in connection.execute(sa.text("SELECT id, username FROM users")):
        users.setdefault(_key(username), []).append(user_id)
    rows = connection.execute(
        sa.select(members.c.project_id, members.c.username, members.c.is_default, members.c.created_at)
    ).all()
    kept: dict[tuple[int, str], tuple[bool, object]] = {}
    for project_id, username, is_default, created_at in sorted(rows, key=lambda r: (r[0], r[1])):
        # "Alice" and "alice" in one project were two rows for one name: they become one.
        key = (project_id, _key(username))
        earlier = kept.get(key)
        kept[key] = (
            (bool(is_default), created_at)
            if earlier is None
            else (earlier[0] or bool(is_default), earlier[1])
        )
    if not rows:
        return
    connection.execute(sa.delete(members))
    connection.execute(
        sa.insert(members),
        [
            {
                "project_id": project_id,
                "username": name,
                "is_default": is_default,
                "created_at": created_at,
                # Bound only where exactly one user presents the name; otherwise on first use.
                "user_id": users[name][0] if len(users.get(name, [])) == 1 else None,
            }
            for (project_id, name), (is_default, created_at) in kept.items()
        ],
    )


def downgrade() -> None:
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.drop_index("ix_memberships_user_id")
        batch_op.drop_constraint(op.f("fk_memberships_user_id_users"), type_="foreignkey")
        batch_op.drop_column("user_id")
