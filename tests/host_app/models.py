"""The host application's own SQLModel models: a typical Phase II ``users`` table.

``created_at`` is NOT NULL with a Python-side default only (no server default), as
SQLModel apps usually write it; our tables reference ``users.id`` and nothing else.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime
from sqlmodel import Field, SQLModel


def _now() -> datetime:
    return datetime.now(UTC)


class User(SQLModel, table=True):
    """A user of the host application."""

    __tablename__ = "users"

    id: str = Field(primary_key=True, max_length=255)
    email: str = Field(max_length=320, unique=True)
    display_name: str | None = Field(default=None, max_length=100)
    created_at: datetime = Field(default_factory=_now, sa_type=DateTime(timezone=True))
