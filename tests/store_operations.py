"""Every ChatStore operation as a zero-argument call, for the per-operation guards.

test_round_trips.py (round trips through a counting proxy) and
test_client_cost.py (Python calls and compilations) measure the same table.
Each entry does the same work every time it is called: the replayed append
reuses one message_id, the next pages start from fixed cursors, and each delete
removes a conversation created beforehand, so the measured call deletes only.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

from chat_storage import ChatStore

Operation = Callable[[], Awaitable[object]]

#: Calls of the delete entry each guard makes (a warm-up call, a measured call).
DELETES = 2


async def every_operation(store: ChatStore, user: str) -> dict[str, Operation]:
    """The table, on fresh data of ``user``."""
    seed = await store.create_conversation(user)
    for i in range(5):
        await store.add_message(user, seed.id, "user", f"seed {i}")
    for _ in range(3):
        await store.create_conversation(user)
    fixed_id = uuid.uuid4()
    await store.add_message(user, seed.id, "assistant", "fixed", message_id=fixed_id)
    history = await store.get_history(user, seed.id, limit=2)
    listing = await store.list_conversations(user, limit=2)
    assert history.next_cursor and listing.next_cursor
    doomed = [(await store.create_conversation(user)).id for _ in range(DELETES)]

    async def delete() -> None:
        await store.delete_conversation(user, doomed.pop())

    return {
        "create_conversation": lambda: store.create_conversation(user),
        "get_conversation": lambda: store.get_conversation(user, seed.id),
        "list_conversations": lambda: store.list_conversations(user, limit=2),
        "list_conversations_next_page": lambda: store.list_conversations(
            user, limit=2, cursor=listing.next_cursor
        ),
        "add_message": lambda: store.add_message(user, seed.id, "user", "hello"),
        "add_message_replay": lambda: store.add_message(
            user, seed.id, "assistant", "fixed", message_id=fixed_id
        ),
        "get_history": lambda: store.get_history(user, seed.id, limit=2),
        "get_history_next_page": lambda: store.get_history(
            user, seed.id, limit=2, cursor=history.next_cursor
        ),
        "archive_conversation": lambda: store.archive_conversation(user, seed.id),
        "restore_conversation": lambda: store.restore_conversation(user, seed.id),
        "delete_conversation": delete,
        "archive_inactive_conversations": lambda: store.archive_inactive_conversations(
            idle_for=timedelta(days=3650)
        ),
    }
