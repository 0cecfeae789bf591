"""Fetched rows to model instances, cheaply.

Results are returned as instances of the ORM classes, so callers get the typed
models they know, but built the way SQLAlchemy's own loader builds them
(``new_instance()`` and a dict fill, about 1 µs) instead of through the
constructor (about 8 µs), which would dominate a 20-message history read. They
are detached, not transient: adding one to a Session does not INSERT it again.
"""

from __future__ import annotations

import functools
from typing import Any, Final

from sqlalchemy import ColumnElement, inspect
from sqlalchemy.orm import attributes, configure_mappers

from ..models import Conversation, ConversationStatus, Message, MessageRole
from .base import Row

_conversations = Conversation.__table__
_messages = Message.__table__

#: Column order of every statement that returns conversations.
CONVERSATION_COLUMNS: Final[tuple[ColumnElement[Any], ...]] = tuple(
    _conversations.c[name]
    for name in ("id", "user_id", "status", "created_at", "updated_at", "last_seq")
)
#: Column order of every statement that returns messages.
MESSAGE_COLUMNS: Final[tuple[ColumnElement[Any], ...]] = tuple(
    _messages.c[name]
    for name in (
        "id",
        "conversation_id",
        "user_id",
        "role",
        "content",
        "metadata",
        "created_at",
        "seq",
    )
)

_conversation_manager = attributes.manager_of_class(Conversation)
_message_manager = attributes.manager_of_class(Message)
_conversation_mapper = inspect(Conversation)
_message_mapper = inspect(Message)


@functools.cache
def _configured() -> bool:
    # Attribute instrumentation is completed by configure_mappers(), which the
    # ORM runs on first query; rows built here may be the first ORM use.
    configure_mappers()
    return True


def conversation_from_row(row: Row, offset: int = 0) -> Conversation:
    """A detached Conversation from CONVERSATION_COLUMNS starting at ``offset``."""
    _configured()
    obj: Conversation = _conversation_manager.new_instance()
    state = attributes.instance_state(obj)
    values = obj.__dict__
    values["id"] = row[offset]
    values["user_id"] = row[offset + 1]
    values["status"] = ConversationStatus(row[offset + 2])
    values["created_at"] = row[offset + 3]
    values["updated_at"] = row[offset + 4]
    values["last_seq"] = row[offset + 5]
    state.key = _conversation_mapper.identity_key_from_primary_key((row[offset],))
    return obj


def message_from_row(row: Row, offset: int = 0) -> Message:
    """A detached Message from MESSAGE_COLUMNS starting at ``offset``."""
    _configured()
    obj: Message = _message_manager.new_instance()
    state = attributes.instance_state(obj)
    values = obj.__dict__
    values["id"] = row[offset]
    values["conversation_id"] = row[offset + 1]
    values["user_id"] = row[offset + 2]
    values["role"] = MessageRole(row[offset + 3])
    values["content"] = row[offset + 4]
    values["metadata_"] = row[offset + 5]
    values["created_at"] = row[offset + 6]
    values["seq"] = row[offset + 7]
    state.key = _message_mapper.identity_key_from_primary_key((row[offset],))
    return obj
