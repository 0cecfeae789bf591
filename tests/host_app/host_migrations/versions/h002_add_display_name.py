"""The host adds a column to users while chat_storage is installed.

Revision ID: h002
Revises: h001
"""

import sqlalchemy as sa
from alembic import op

revision = "h002"
down_revision = "h001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("display_name", sa.String(100), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "display_name")
