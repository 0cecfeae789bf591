"""Every public ChatStore operation, repeatable: the table both deterministic
guards measure (client_cost.py: instructions; server_work.py: rows, buffers,
WAL records).

Each entry does the same work on every call: appends go to a conversation no
read looks at, reads read a fixed page of a fixed conversation, and each
archive, restore or delete gets a conversation of its own prepared beforehand
(:func:`prepare` makes as many as the largest count asked for, so that runs
asking for different counts do the same preparation).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Final

import asyncpg

from chat_storage import ChatStore

#: One call of an operation: its argument is the call's index (0, 1, ...).
Call = Callable[[int], Awaitable[object]]

OPERATIONS: Final = (
    "create_conversation",
    "get_conversation",
    "list_conversations",
    "list_conversations_next_page",
    "add_message",
    "add_message_replay",
    "get_history",
    "get_history_next_page",
    "archive_conversation",
    "restore_conversation",
    "delete_conversation",
    "archive_inactive_conversations",
)
#: Messages in the conversation the history reads page through.
HISTORY_LENGTH: Final = 60
#: Conversations the listing reads page through.
LISTED: Final = 8
PAGE: Final = 20


async def add_user(url: str, user: str) -> None:
    """The users stand-in's row for ``user`` (conversations reference it)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO users (id, email) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            user,
            f"{user}@example.com",
        )
    finally:
        await conn.close()


async def prepare(store: ChatStore, user: str, calls: int) -> dict[str, Call]:
    """Data of ``user`` for ``calls`` calls of each operation; the table of calls.

    Raises:
        chat_storage.ChatStorageError: the store refused the preparation.
    """
    read = await store.create_conversation(user)
    for i in range(HISTORY_LENGTH):
        await store.add_message(user, read.id, "user" if i % 2 == 0 else "assistant", f"m {i}")
    for _ in range(LISTED):
        await store.create_conversation(user)
    appended = await store.create_conversation(user)
    fixed_id = uuid.uuid4()
    await store.add_message(user, appended.id, "assistant", "fixed", message_id=fixed_id)
    history = await store.get_history(user, read.id, limit=PAGE)
    listing = await store.list_conversations(user, limit=2)
    assert history.next_cursor and listing.next_cursor
    to_archive = [(await store.create_conversation(user)).id for _ in range(calls)]
    to_restore = [(await store.create_conversation(user)).id for _ in range(calls)]
    for conversation in to_restore:
        await store.archive_conversation(user, conversation)
    to_delete = [(await store.create_conversation(user)).id for _ in range(calls)]
    text = "a reply of a realistic length, about eighty characters, for the row to carry."

    calls_by_name: dict[str, Call] = {
        "create_conversation": lambda i: store.create_conversation(user),
        "get_conversation": lambda i: store.get_conversation(user, read.id),
        "list_conversations": lambda i: store.list_conversations(user, limit=2),
        "list_conversations_next_page": lambda i: store.list_conversations(
            user, limit=2, cursor=listing.next_cursor
        ),
        "add_message": lambda i: store.add_message(user, appended.id, "user", text),
        "add_message_replay": lambda i: store.add_message(
            user, appended.id, "assistant", "fixed", message_id=fixed_id
        ),
        "get_history": lambda i: store.get_history(user, read.id, limit=PAGE),
        "get_history_next_page": lambda i: store.get_history(
            user, read.id, limit=PAGE, cursor=history.next_cursor
        ),
        "archive_conversation": lambda i: store.archive_conversation(user, to_archive[i]),
        "restore_conversation": lambda i: store.restore_conversation(user, to_restore[i]),
        "delete_conversation": lambda i: store.delete_conversation(user, to_delete[i]),
        "archive_inactive_conversations": lambda i: store.archive_inactive_conversations(
            idle_for=timedelta(days=3650)
        ),
    }
    assert tuple(calls_by_name) == OPERATIONS
    return calls_by_name
