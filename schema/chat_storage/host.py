"""What a host application calls to live beside the chat tables.

The host (a SQLModel/FastAPI app, say) keeps its own models, its own Alembic
history and its own engine. Three things need help from this package:

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
  internal order columns), which FastAPI also accepts as a response model;
* its own ORM code may append as the plan's Pattern 3 does,
  ``session.add(Message(...))``: the ``before_insert`` listener below numbers the
  message and bumps its conversation, with ``add_message``'s checks. It is
  registered when the package is imported (``chat_storage`` imports this module).

docs/host-application.md walks through the whole set-up.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from sqlalchemy import event, func, literal_column, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapper, attributes, object_session

from .errors import ConversationArchived, ConversationNotFound, InvalidInput, translate_errors
from .models import (
    Base,
    Conversation,
    ConversationDict,
    ConversationStatus,
    Message,
    MessageDict,
)
from .validation import check_content, check_role, check_user_id, check_uuid, encode_metadata

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


@event.listens_for(Message, "before_insert")
def _number_message(_mapper: Mapper[Message], connection: Connection, message: Message) -> None:
    """Give a Message added to an ORM session its ``seq`` and bump its conversation.

    The same rules as ``add_message``: the conversation must be the user's and
    active. The UPDATE locks the conversation row until the session's transaction
    ends, so concurrent appenders queue and each gets the next number.
    """
    if message.seq is not None:
        raise InvalidInput("Message.seq is assigned when the message is inserted; leave it unset")
    role = check_role(message.role)
    check_content(role, message.content)
    encode_metadata(message.metadata_)
    user_id = check_user_id(message.user_id)
    conversation_id = check_uuid(message.conversation_id, "conversation_id")
    message.role, message.conversation_id = role, conversation_id
    c = Conversation.__table__.c
    owned = (c.id == conversation_id) & (c.user_id == user_id)
    with translate_errors():
        bumped = connection.execute(
            update(Conversation)
            .where(owned, c.status == literal_column("'active'"))
            .values(last_seq=c.last_seq + 1, updated_at=func.now())
            .returning(c.last_seq, c.updated_at)
        ).first()
        status = None if bumped else connection.execute(select(c.status).where(owned)).scalar()
    if bumped is None:
        if status == ConversationStatus.ARCHIVED:
            raise ConversationArchived("conversation is archived; restore it to append")
        raise ConversationNotFound("conversation not found")
    message.seq = bumped.last_seq
    _refresh_parent(message, conversation_id, bumped.last_seq, bumped.updated_at)


def _refresh_parent(
    message: Message, conversation_id: uuid.UUID, last_seq: int, updated_at: datetime
) -> None:
    # A Conversation loaded in the same session would otherwise show the values
    # from before the bump; attributes the caller has changed are left alone.
    session = object_session(message)
    if session is None:
        return
    parent = session.identity_map.get(
        Conversation.__mapper__.identity_key_from_primary_key((conversation_id,))
    )
    if not isinstance(parent, Conversation):
        return
    state = attributes.instance_state(parent)
    for name, value in (("last_seq", last_seq), ("updated_at", updated_at)):
        if not state.attrs[name].history.has_changes():
            attributes.set_committed_value(parent, name, value)
