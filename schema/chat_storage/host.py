"""What a host application calls to live beside the chat tables.

The host (a SQLModel/FastAPI app, say) keeps its own models, its own Alembic
history and its own engine. Two things need help from this package:

* its ``alembic revision --autogenerate`` must not see our tables, or it proposes
  ``op.drop_table("messages")``; pass both filters in the host's ``env.py``::

      from chat_storage.host import include_name, include_object

      context.configure(
          connection=connection,
          target_metadata=SQLModel.metadata,
          include_name=include_name,
          include_object=include_object,
      )

* its responses need a JSON shape: ``conversation.to_dict()`` and
  ``message.to_dict()`` return :class:`ConversationDict` / :class:`MessageDict`
  (string UUIDs, ISO 8601 timestamps, ``metadata`` under its own name, no
  internal order columns), which FastAPI also accepts as a response model.

docs/host-application.md walks through the whole set-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

# typing's TypedDict is refused by pydantic (FastAPI's response models) before
# Python 3.12; typing_extensions comes with SQLAlchemy.
from typing_extensions import TypedDict

from .models import Base

__all__ = [
    "CHAT_STORAGE_TABLES",
    "ConversationDict",
    "MessageDict",
    "include_name",
    "include_object",
]

#: Every table this package's migrations create or own, version table included.
CHAT_STORAGE_TABLES: Final = frozenset(
    {*(t.name for t in Base.metadata.sorted_tables), "chat_storage_alembic_version"}
)


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


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Alembic ``include_name`` hook: skip our tables when reading the database.

    Without it the host's autogenerate finds ``conversations``, ``messages`` and
    ``chat_storage_alembic_version`` in the database but not in its metadata and
    proposes dropping them.

    Args:
        name: the reflected object's name.
        type_: ``"schema"``, ``"table"``, ``"column"``, ``"index"``,
            ``"unique_constraint"`` or ``"foreign_key_constraint"``.
        parent_names: names of the schema and table the object belongs to.

    Returns:
        False for our tables and anything on them, True for everything else.

    Raises:
        Nothing: a pure function of its arguments.
    """
    if type_ == "table":
        return name not in CHAT_STORAGE_TABLES
    return parent_names.get("table_name") not in CHAT_STORAGE_TABLES


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic ``include_object`` hook: skip our tables on the metadata side too.

    Needed when the host's ``target_metadata`` includes ``chat_storage.Base.metadata``
    (for example ``[SQLModel.metadata, Base.metadata]``); harmless otherwise. Our
    schema changes only through our own migrations (``python -m chat_storage``).

    Args:
        obj: the Table, Column, Index or constraint being compared.
        name: its name.
        type_: ``"table"``, ``"column"``, ``"index"``, ``"unique_constraint"``
            or ``"foreign_key_constraint"``.
        reflected: True when ``obj`` was read from the database.
        compare_to: the object it is compared with, or None.

    Returns:
        False for our tables and anything on them, True for everything else.

    Raises:
        Nothing: a pure function of its arguments.
    """
    if type_ == "table":
        return name not in CHAT_STORAGE_TABLES
    table = getattr(obj, "table", None)
    return table is None or table.name not in CHAT_STORAGE_TABLES
