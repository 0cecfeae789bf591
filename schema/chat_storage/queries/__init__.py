"""Plain query functions: the chat operations on a caller's connection or session.

Each takes an ``AsyncConnection`` or ``AsyncSession`` first and keyword-only
arguments after it, runs one statement, and never commits: whoever opened the
transaction ends it, so a host application can combine these with its own writes.
``ChatStore`` runs the very same statements, one round trip each.
"""

from .conversations import (
    archive_conversation,
    archive_inactive_batch,
    create_conversation,
    delete_conversation,
    get_conversation,
    list_conversations,
    restore_conversation,
)
from .messages import add_message, get_history

__all__ = [
    "add_message",
    "archive_conversation",
    "archive_inactive_batch",
    "create_conversation",
    "delete_conversation",
    "get_conversation",
    "get_history",
    "list_conversations",
    "restore_conversation",
]
