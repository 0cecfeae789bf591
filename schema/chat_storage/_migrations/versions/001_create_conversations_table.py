"""Create the conversations table, exactly as the plan's DDL.

Revision ID: 001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from chat_storage.migrations import UsersTableIncompatible, UsersTableMissing

revision: str = "001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# What our VARCHAR(255) user_id columns can reference: PostgreSQL refuses a
# foreign key between types with no common equality operator (an integer or
# UUID users.id) only after it has half-built the table, in a long error.
_USERS_ID = sa.text(
    """
    SELECT t.oid IS NOT NULL AS has_table,
           a.atttypid::regtype::text AS id_type,
           EXISTS (
               SELECT 1 FROM pg_index i
               WHERE i.indrelid = t.oid AND i.indisunique AND i.indpred IS NULL
                 AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum
           ) AS id_unique
    FROM (SELECT to_regclass('users') AS oid) AS t
    LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attname = 'id' AND NOT a.attisdropped
    """
)
_REFERENCEABLE = frozenset({"character varying", "text"})


def _require_users_table() -> None:
    # users belongs to the existing application: we reference it, never create it.
    if op.get_context().as_sql:
        # Offline there is no database to ask: say what the script assumes.
        op.get_context().impl.static_output(
            "-- requires: the application's table users with a unique VARCHAR or TEXT id "
            "(checked when run online)"
        )
        return
    has_table, id_type, id_unique = op.get_bind().execute(_USERS_ID).one()
    if not has_table:
        raise UsersTableMissing(
            "table 'users' not found: apply the application's own migrations first "
            "(these migrations add conversations and messages beside an existing users table)"
        )
    if id_type is None:
        raise UsersTableIncompatible(
            "table 'users' has no column 'id': conversations.user_id and messages.user_id "
            "reference users.id"
        )
    if id_type not in _REFERENCEABLE:
        raise UsersTableIncompatible(
            f"users.id is {id_type}, but conversations.user_id and messages.user_id are "
            "VARCHAR(255) and reference it: users.id must be VARCHAR or TEXT (the plan's schema)"
        )
    if not id_unique:
        raise UsersTableIncompatible(
            "users.id has no primary key or unique constraint: the foreign keys of "
            "conversations and messages need one"
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
