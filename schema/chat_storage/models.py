"""Typed declarative models of the two chat tables.

The tables sit beside an existing application's schema: ``users`` belongs to that
application, so it is described here only as much as the foreign keys need
(``users.id``) and is never created, altered or dropped by this package.

The columns follow the plan exactly; ``seq`` (messages) and ``last_seq``
(conversations) come from migration 003 and make history order exact, since
``created_at DEFAULT now()`` is the transaction's start time and cannot order two
messages written in one transaction.

The classes work in a host application's own ORM session too:
``session.add(Message(conversation_id=..., user_id=..., role=..., content=...))``
numbers the message and bumps its conversation at flush (see
``_number_message``), and ``to_dict()`` gives the JSON shape of a response
(``chat_storage.host``).
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    mapped_column,
)

# typing's TypedDict is refused by pydantic (FastAPI's response models) before
# Python 3.12.
from typing_extensions import TypedDict

__all__ = [
    "Base",
    "Conversation",
    "ConversationDict",
    "ConversationStatus",
    "Message",
    "MessageDict",
    "MessageRole",
    "users_table",
]


class ConversationStatus(enum.StrEnum):
    """Lifecycle of a conversation; enforced by a CHECK constraint in the database."""

    ACTIVE = "active"
    ARCHIVED = "archived"


class MessageRole(enum.StrEnum):
    """Who wrote a message; enforced by a CHECK constraint in the database."""

    USER = "user"
    ASSISTANT = "assistant"


class ConversationDict(TypedDict):
    """A conversation as a JSON object (``Conversation.to_dict()``)."""

    id: str
    user_id: str
    status: str
    created_at: str
    updated_at: str


class MessageDict(TypedDict):
    """A message as a JSON object (``Message.to_dict()``)."""

    id: str
    conversation_id: str
    user_id: str
    role: str
    content: str
    metadata: dict[str, Any] | None
    created_at: str


class Base(DeclarativeBase):
    """Declarative base: every ``datetime`` is timezone-aware, every ``dict`` is JSONB."""

    metadata = MetaData()
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSONB,
        uuid.UUID: Uuid(as_uuid=True),
    }


# The existing application's table, reduced to what our foreign keys reference.
# It lives on a MetaData of its own, never on Base.metadata: a host application's
# Base.metadata.create_all() / drop_all() must not create a one-column users table
# or drop the real one, and Alembic must not see two "users" when a host lists
# [SQLModel.metadata, Base.metadata]. The foreign keys point at the Column object,
# which SQLAlchemy allows across MetaData collections; the DDL still reads
# REFERENCES users (id).
users_table = Table(
    "users",
    MetaData(),
    Column("id", String(255), primary_key=True),
    info={"external": True},
)


# Statuses and roles are stored as VARCHAR with CHECK constraints (the plan's
# choice), not as a PostgreSQL ENUM type: adding a value later is then a
# constraint swap, not an ALTER TYPE that cannot run inside a transaction.
def _varchar_enum(enum_class: type[enum.Enum]) -> Enum:
    # VARCHAR(20) in the database, the Python enum in Python; the CHECK constraint
    # is declared explicitly below so its name matches the plan's DDL.
    return Enum(
        enum_class,
        native_enum=False,
        create_constraint=False,
        length=20,
        values_callable=lambda members: [m.value for m in members],
    )


_STATUSES = ", ".join(f"'{s.value}'" for s in ConversationStatus)
_ROLES = ", ".join(f"'{r.value}'" for r in MessageRole)


class Conversation(Base):
    """A chat session owned by one user."""

    __tablename__ = "conversations"
    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUSES})", name="conversations_status_check"),
        Index("idx_conversations_user_id", "user_id"),
        Index("idx_conversations_updated_at", text("updated_at DESC")),
        Index("idx_conversations_user_status", "user_id", "status"),
        Index(
            "idx_conversations_user_status_recent",
            "user_id",
            "status",
            text("updated_at DESC"),
            text("id DESC"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, server_default=text("gen_random_uuid()")
    )
    user_id: Mapped[str] = mapped_column(
        String(255), ForeignKey(users_table.c.id, ondelete="CASCADE"), nullable=False
    )
    status: Mapped[ConversationStatus] = mapped_column(
        _varchar_enum(ConversationStatus),
        nullable=False,
        server_default=text("'active'::character varying"),
    )
    created_at: Mapped[datetime] = mapped_column(nullable=False, server_default=text("now()"))
    updated_at: Mapped[datetime] = mapped_column(nullable=False, server_default=text("now()"))
    # Highest message sequence number handed out; bumped by the same UPDATE that
    # bumps updated_at, so allocating an order costs no extra statement.
    last_seq: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))

    # Server defaults (id, status, timestamps) come back in the INSERT's RETURNING:
    # under asyncio a later lazy load of an expired attribute would fail.
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012 - SQLAlchemy reads it

    def to_dict(self) -> ConversationDict:
        """The public fields as JSON-ready values (string id, ISO 8601 timestamps).

        ``last_seq`` is internal and left out.
        """
        return {
            "id": str(self.id),
            "user_id": self.user_id,
            "status": ConversationStatus(self.status).value,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


class Message(Base):
    """One message of a conversation, ordered by ``seq`` within it."""

    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint(f"role IN ({_ROLES})", name="messages_role_check"),
        CheckConstraint(
            "role <> 'user' OR length(content) <= 1000", name="chk_user_message_length"
        ),
        Index("idx_messages_conversation_id", "conversation_id"),
        Index("idx_messages_conversation_created", "conversation_id", text("created_at DESC")),
        Index("uq_messages_conversation_seq", "conversation_id", "seq", unique=True),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, server_default=text("gen_random_uuid()")
    )
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[str] = mapped_column(
        String(255), ForeignKey(users_table.c.id, ondelete="CASCADE"), nullable=False
    )
    role: Mapped[MessageRole] = mapped_column(_varchar_enum(MessageRole), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    # ``metadata`` is reserved on declarative classes; the column keeps the plan's name.
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB, nullable=True)
    created_at: Mapped[datetime] = mapped_column(nullable=False, server_default=text("now()"))
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)

    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012 - SQLAlchemy reads it

    def to_dict(self) -> MessageDict:
        """The public fields as JSON-ready values, ``metadata`` under its own name.

        ``seq`` is internal (history order) and left out.
        """
        return {
            "id": str(self.id),
            "conversation_id": str(self.conversation_id),
            "user_id": self.user_id,
            "role": MessageRole(self.role).value,
            "content": self.content,
            "metadata": self.metadata_,
            "created_at": self.created_at.isoformat(),
        }
