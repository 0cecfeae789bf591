"""ChatStore on a real PostgreSQL: the plan's operations, ownership, order, idempotency."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, timedelta

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from chat_storage import (
    ChatStore,
    ConversationArchived,
    ConversationNotFound,
    ConversationStatus,
    IdempotencyConflict,
    MessageRole,
    UserNotFound,
    queries,
)
from tests.conftest import MakeUser


async def count_rows(admin: asyncpg.Connection, user_id: str) -> tuple[int, int]:
    conversations = await admin.fetchval(
        "SELECT count(*) FROM conversations WHERE user_id = $1", user_id
    )
    messages = await admin.fetchval("SELECT count(*) FROM messages WHERE user_id = $1", user_id)
    return conversations, messages


async def test_create_conversation_defaults(store: ChatStore, user_id: str) -> None:
    """A new conversation is active, owned, timezone-aware and has no messages yet."""
    conversation = await store.create_conversation(user_id)
    assert conversation.user_id == user_id
    assert conversation.status is ConversationStatus.ACTIVE
    assert conversation.created_at.tzinfo is not None
    assert conversation.updated_at == conversation.created_at
    assert conversation.last_seq == 0
    assert isinstance(conversation.id, uuid.UUID)


async def test_create_conversation_for_unknown_user(
    store: ChatStore, admin: asyncpg.Connection
) -> None:
    """A user id missing from users is UserNotFound and writes nothing."""
    with pytest.raises(UserNotFound):
        await store.create_conversation("no-such-user")
    assert await count_rows(admin, "no-such-user") == (0, 0)


async def test_get_conversation_of_another_user_is_not_found(
    store: ChatStore, make_user: MakeUser
) -> None:
    """Another user's conversation raises exactly what a missing one raises."""
    owner, other = await make_user(), await make_user()
    conversation = await store.create_conversation(owner)
    with pytest.raises(ConversationNotFound) as foreign:
        await store.get_conversation(other, conversation.id)
    with pytest.raises(ConversationNotFound) as missing:
        await store.get_conversation(other, uuid.uuid4())
    assert str(foreign.value) == str(missing.value)
    assert (await store.get_conversation(owner, str(conversation.id))).id == conversation.id


async def test_add_message_bumps_conversation(store: ChatStore, user_id: str) -> None:
    """Appending stores the message and moves the conversation's updated_at forward."""
    conversation = await store.create_conversation(user_id)
    message = await store.add_message(
        user_id, conversation.id, "user", "Hello", metadata={"client": "web", "n": [1, 2]}
    )
    assert message.role is MessageRole.USER
    assert message.content == "Hello"
    assert message.metadata_ == {"client": "web", "n": [1, 2]}
    assert message.seq == 1
    assert message.created_at.tzinfo is not None
    after = await store.get_conversation(user_id, conversation.id)
    assert after.updated_at > conversation.updated_at
    assert after.last_seq == 1


async def test_add_message_to_archived_conversation(
    store: ChatStore, user_id: str, admin: asyncpg.Connection
) -> None:
    """Appending to an archived conversation is ConversationArchived and writes nothing."""
    conversation = await store.create_conversation(user_id)
    await store.archive_conversation(user_id, conversation.id)
    with pytest.raises(ConversationArchived):
        await store.add_message(user_id, conversation.id, "user", "late")
    assert await count_rows(admin, user_id) == (1, 0)
    restored = await store.restore_conversation(user_id, conversation.id)
    assert restored.status is ConversationStatus.ACTIVE
    assert (await store.add_message(user_id, conversation.id, "user", "back")).seq == 1


async def test_add_message_to_another_users_conversation(
    store: ChatStore, make_user: MakeUser, admin: asyncpg.Connection
) -> None:
    """Appending to someone else's conversation is not-found and writes nothing."""
    owner, intruder = await make_user(), await make_user()
    conversation = await store.create_conversation(owner)
    with pytest.raises(ConversationNotFound):
        await store.add_message(intruder, conversation.id, "user", "hi")
    assert await count_rows(admin, owner) == (1, 0)
    assert await count_rows(admin, intruder) == (0, 0)
    assert (await store.get_conversation(owner, conversation.id)).last_seq == 0


async def test_retry_with_same_message_id_is_idempotent(
    store: ChatStore, user_id: str, admin: asyncpg.Connection
) -> None:
    """Retrying add_message with its message_id returns the stored message, once."""
    conversation = await store.create_conversation(user_id)
    message_id = uuid.uuid4()
    first = await store.add_message(user_id, conversation.id, "user", "hi", message_id=message_id)
    again = await store.add_message(user_id, conversation.id, "user", "hi", message_id=message_id)
    assert again.id == first.id == message_id
    assert again.seq == first.seq
    assert await count_rows(admin, user_id) == (1, 1)
    assert (await store.get_conversation(user_id, conversation.id)).last_seq == 1


async def test_concurrent_retries_write_once(
    store: ChatStore, user_id: str, admin: asyncpg.Connection
) -> None:
    """Ten concurrent calls with one message_id store one message and all return it."""
    conversation = await store.create_conversation(user_id)
    message_id = uuid.uuid4()
    results = await asyncio.gather(
        *(
            store.add_message(user_id, conversation.id, "assistant", "x", message_id=message_id)
            for _ in range(10)
        )
    )
    assert {m.id for m in results} == {message_id}
    assert await count_rows(admin, user_id) == (1, 1)


async def test_message_id_reused_in_other_conversation(store: ChatStore, user_id: str) -> None:
    """A message_id already used in another conversation is an IdempotencyConflict."""
    first = await store.create_conversation(user_id)
    second = await store.create_conversation(user_id)
    message_id = uuid.uuid4()
    await store.add_message(user_id, first.id, "user", "a", message_id=message_id)
    with pytest.raises(IdempotencyConflict):
        await store.add_message(user_id, second.id, "user", "a", message_id=message_id)


async def test_message_id_of_another_user(store: ChatStore, make_user: MakeUser) -> None:
    """A message_id taken by another user is a conflict, not a replay of their message."""
    alice, bob = await make_user(), await make_user()
    a_conv = await store.create_conversation(alice)
    b_conv = await store.create_conversation(bob)
    message_id = uuid.uuid4()
    await store.add_message(alice, a_conv.id, "user", "secret", message_id=message_id)
    with pytest.raises(IdempotencyConflict):
        await store.add_message(bob, b_conv.id, "user", "mine", message_id=message_id)
    page = await store.get_history(bob, b_conv.id)
    assert page.items == []


async def test_history_is_oldest_first_and_paginates(store: ChatStore, user_id: str) -> None:
    """History returns the latest page oldest-first, and cursors walk back to the start."""
    conversation = await store.create_conversation(user_id)
    for i in range(7):
        role = "user" if i % 2 == 0 else "assistant"
        await store.add_message(user_id, conversation.id, role, f"m{i}")
    page = await store.get_history(user_id, conversation.id, limit=3)
    assert [m.content for m in page.items] == ["m4", "m5", "m6"]
    seen = [m.content for m in page.items]
    while page.next_cursor:
        page = await store.get_history(user_id, conversation.id, limit=3, cursor=page.next_cursor)
        seen = [m.content for m in page.items] + seen
    assert seen == [f"m{i}" for i in range(7)]


async def test_history_of_empty_conversation(store: ChatStore, user_id: str) -> None:
    """An empty conversation has an empty last page; a missing one is not found."""
    conversation = await store.create_conversation(user_id)
    page = await store.get_history(user_id, conversation.id)
    assert page.items == [] and page.next_cursor is None
    with pytest.raises(ConversationNotFound):
        await store.get_history(user_id, uuid.uuid4())


async def test_same_transaction_messages_keep_write_order(
    engine: AsyncEngine, store: ChatStore, user_id: str
) -> None:
    """Messages written in one transaction (same created_at) read back in write order."""
    conversation = await store.create_conversation(user_id)
    async with engine.begin() as conn:
        for i in range(5):
            await queries.add_message(
                conn, user_id=user_id, conversation_id=conversation.id, role="user", content=f"t{i}"
            )
    page = await store.get_history(user_id, conversation.id)
    assert len({m.created_at for m in page.items}) == 1
    assert [m.content for m in page.items] == [f"t{i}" for i in range(5)]


async def test_query_functions_join_the_callers_transaction(
    engine: AsyncEngine, store: ChatStore, user_id: str, admin: asyncpg.Connection
) -> None:
    """Query functions never commit: rolling back the caller's transaction undoes them."""
    async with engine.connect() as conn:
        transaction = await conn.begin()
        conversation = await queries.create_conversation(conn, user_id=user_id)
        await queries.add_message(
            conn, user_id=user_id, conversation_id=conversation.id, role="user", content="x"
        )
        await transaction.rollback()
    assert await count_rows(admin, user_id) == (0, 0)


async def test_list_conversations_most_recent_first(store: ChatStore, user_id: str) -> None:
    """Listing returns active conversations by last activity and pages without overlap."""
    conversations = [await store.create_conversation(user_id) for _ in range(5)]
    await store.add_message(user_id, conversations[1].id, "user", "bump")
    archived = await store.archive_conversation(user_id, conversations[2].id)
    page = await store.list_conversations(user_id, limit=2)
    ids = [c.id for c in page.items]
    assert ids[0] == conversations[1].id
    while page.next_cursor:
        page = await store.list_conversations(user_id, limit=2, cursor=page.next_cursor)
        ids += [c.id for c in page.items]
    assert sorted(map(str, ids)) == sorted(str(c.id) for c in conversations if c.id != archived.id)
    assert len(ids) == 4
    only_archived = await store.list_conversations(user_id, status="archived")
    assert [c.id for c in only_archived.items] == [archived.id]


async def test_delete_conversation_cascades_to_messages(
    store: ChatStore, user_id: str, admin: asyncpg.Connection
) -> None:
    """Deleting a conversation removes its messages; deleting it again is not found."""
    conversation = await store.create_conversation(user_id)
    await store.add_message(user_id, conversation.id, "user", "bye")
    await store.delete_conversation(user_id, conversation.id)
    assert await count_rows(admin, user_id) == (0, 0)
    with pytest.raises(ConversationNotFound):
        await store.delete_conversation(user_id, conversation.id)


async def test_deleting_user_cascades_to_both_tables(
    store: ChatStore, user_id: str, admin: asyncpg.Connection
) -> None:
    """Deleting the application's user removes their conversations and messages."""
    conversation = await store.create_conversation(user_id)
    await store.add_message(user_id, conversation.id, "user", "hi")
    await admin.execute("DELETE FROM users WHERE id = $1", user_id)
    assert await count_rows(admin, user_id) == (0, 0)


async def test_delete_conversation_of_another_user(
    store: ChatStore, make_user: MakeUser, admin: asyncpg.Connection
) -> None:
    """Another user cannot delete (or learn about) a conversation."""
    owner, other = await make_user(), await make_user()
    conversation = await store.create_conversation(owner)
    with pytest.raises(ConversationNotFound):
        await store.delete_conversation(other, conversation.id)
    with pytest.raises(ConversationNotFound):
        await store.archive_conversation(other, conversation.id)
    assert (await store.get_conversation(owner, conversation.id)).status == "active"


async def test_archive_inactive_conversations_in_batches(
    store: ChatStore, user_id: str, admin: asyncpg.Connection
) -> None:
    """The maintenance job archives only idle conversations, across several batches."""
    idle = [await store.create_conversation(user_id) for _ in range(5)]
    fresh = await store.create_conversation(user_id)
    await admin.execute(
        "UPDATE conversations SET updated_at = now() - interval '40 days' WHERE id = ANY($1)",
        [c.id for c in idle],
    )
    archived = await store.archive_inactive_conversations(idle_for=timedelta(days=30), batch_size=2)
    assert archived >= 5  # other tests' conversations are recent, so only ours qualify
    statuses = dict(
        await admin.fetch("SELECT id, status FROM conversations WHERE user_id = $1", user_id)
    )
    assert all(statuses[c.id] == "archived" for c in idle)
    assert statuses[fresh.id] == "active"


async def test_timestamps_are_utc_aware(store: ChatStore, user_id: str) -> None:
    """Returned timestamps carry a UTC offset, never naive datetimes."""
    conversation = await store.create_conversation(user_id)
    message = await store.add_message(user_id, conversation.id, "assistant", "ok")
    assert message.created_at.utcoffset() == timedelta(0)
    assert conversation.created_at.astimezone(UTC) == conversation.created_at
