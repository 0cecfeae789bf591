"""Add a per-conversation message sequence, so history order is exact.

``created_at DEFAULT now()`` is the transaction's start time: two messages
written in one transaction, or in the same microsecond, tie, and ordering by it
shuffles them. ``messages.seq`` is allocated by the same ``UPDATE conversations``
that bumps ``updated_at`` (``last_seq = last_seq + 1``), so it costs no extra
statement, and the unique ``(conversation_id, seq)`` index serves history reads.

Existing rows are numbered by ``(created_at, id)``, the best order they have.

Revision ID: 003
Revises: 002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "003"
down_revision: str | None = "002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "conversations",
        sa.Column("last_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column("messages", sa.Column("seq", sa.BigInteger(), nullable=True))
    op.execute(
        """
        UPDATE messages m SET seq = numbered.n
        FROM (
            SELECT id, row_number() OVER (PARTITION BY conversation_id ORDER BY created_at, id) AS n
            FROM messages
        ) AS numbered
        WHERE m.id = numbered.id
        """
    )
    op.execute(
        """
        UPDATE conversations c SET last_seq = top.max_seq
        FROM (SELECT conversation_id, max(seq) AS max_seq FROM messages GROUP BY conversation_id) AS top
        WHERE c.id = top.conversation_id
        """
    )
    op.alter_column("messages", "seq", nullable=False)
    op.create_index(
        "uq_messages_conversation_seq", "messages", ["conversation_id", "seq"], unique=True
    )


def downgrade() -> None:
    op.drop_index("uq_messages_conversation_seq", table_name="messages")
    op.drop_column("messages", "seq")
    op.drop_column("conversations", "last_seq")
