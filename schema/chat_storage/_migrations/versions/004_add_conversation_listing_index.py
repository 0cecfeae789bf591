"""Add the index that serves "a user's most recent conversations" without a sort.

The plan's ``idx_conversations_user_status (user_id, status)`` finds a user's
active conversations but not in ``updated_at`` order, so every listing sorted
all of them. ``(user_id, status, updated_at DESC, id DESC)`` returns a keyset
page by walking the index and stopping after ``limit`` rows.

Revision ID: 004
Revises: 003
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "004"
down_revision: str | None = "003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "idx_conversations_user_status_recent",
        "conversations",
        ["user_id", "status", sa.text("updated_at DESC"), sa.text("id DESC")],
    )


def downgrade() -> None:
    op.drop_index("idx_conversations_user_status_recent", table_name="conversations")
