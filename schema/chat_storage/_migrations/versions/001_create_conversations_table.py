"""Create the conversations table, exactly as the plan's DDL.

Revision ID: 001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision: str = "001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _require_users_table() -> None:
    # users belongs to the existing application: we reference it, never create it.
    # CommandError makes the alembic CLI print one line instead of a traceback.
    bind = op.get_bind()
    found = bind.execute(sa.text("SELECT to_regclass('users') IS NOT NULL")).scalar()
    if not found:
        raise CommandError(
            "table 'users' not found: apply the application's own migrations first "
            "(these migrations add conversations and messages beside an existing users table)"
        )


def upgrade() -> None:
    _require_users_table()
    # gen_random_uuid() is built in from PostgreSQL 13; no extension needed.
    op.create_table(
        "conversations",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(20), server_default=sa.text("'active'"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("status IN ('active', 'archived')", name="conversations_status_check"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], ondelete="CASCADE", name="conversations_user_id_fkey"
        ),
        sa.PrimaryKeyConstraint("id", name="conversations_pkey"),
    )
    op.create_index("idx_conversations_user_id", "conversations", ["user_id"])
    op.create_index("idx_conversations_updated_at", "conversations", [sa.text("updated_at DESC")])
    op.create_index("idx_conversations_user_status", "conversations", ["user_id", "status"])


def downgrade() -> None:
    op.drop_index("idx_conversations_user_status", table_name="conversations")
    op.drop_index("idx_conversations_updated_at", table_name="conversations")
    op.drop_index("idx_conversations_user_id", table_name="conversations")
    op.drop_table("conversations")
