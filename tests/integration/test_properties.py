"""Properties that hold for all inputs: page walks, write order, ownership."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat_storage import ChatStore, ChatStoreError, ConversationNotFound, Message
from tests.conftest import MakeUser

FAST = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


async def walk_history(
    store: ChatStore, user: str, conversation: uuid.UUID, limit: int
) -> list[Message]:
    page = await store.get_history(user, conversation, limit=limit)
    seen = list(page.items)
    while page.next_cursor:
        page = await store.get_history(user, conversation, limit=limit, cursor=page.next_cursor)
        assert len(page.items) <= limit
        seen = list(page.items) + seen
    return seen


@FAST
@given(
    initial=st.integers(min_value=0, max_value=30),
    concurrent=st.integers(min_value=0, max_value=20),
    limit=st.integers(min_value=1, max_value=12),
)
async def test_history_walk_sees_every_message_once_in_write_order(
    store: ChatStore, make_user: MakeUser, initial: int, concurrent: int, limit: int
) -> None:
    """Walking pages back while others append yields each earlier message once, in order."""
    user = await make_user()
    conversation = (await store.create_conversation(user)).id
    written = [
        (await store.add_message(user, conversation, "user", f"m{i}")).id for i in range(initial)
    ]

    async def append_more() -> None:
        for i in range(concurrent):
            await store.add_message(user, conversation, "assistant", f"late{i}")

    walked, _ = await asyncio.gather(walk_history(store, user, conversation, limit), append_more())
    walked_ids = [m.id for m in walked]
    # Messages appended during the walk are newer than its first page: the walk
    # must hold exactly the earlier ones (and maybe a prefix-free tail of late
    # ones if they landed before the first page was read), with no repeats.
    assert len(walked_ids) == len(set(walked_ids))
    assert walked_ids[: len(written)] == written
    seqs = [m.seq for m in walked]
    assert seqs == sorted(seqs)
    everything = await walk_history(store, user, conversation, limit)
    assert [m.seq for m in everything] == list(range(1, initial + concurrent + 1))


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(
            ["create", "add", "history", "get", "list", "archive", "restore", "delete"]
        ),
        st.integers(min_value=0, max_value=2),  # which user acts
        st.integers(min_value=0, max_value=5),  # which known conversation
    ),
    min_size=5,
    max_size=25,
)


async def snapshot(admin: asyncpg.Connection, user: str) -> list[Any]:
    rows = await admin.fetch(
        """SELECT c.id, c.status, c.updated_at, c.last_seq,
                  (SELECT array_agg(m.id ORDER BY m.seq) FROM messages m
                   WHERE m.conversation_id = c.id) AS messages
           FROM conversations c WHERE c.user_id = $1 ORDER BY c.id""",
        user,
    )
    return [tuple(r) for r in rows]


@FAST
@given(operations=OPERATIONS)
async def test_no_operation_touches_another_users_data(
    store: ChatStore, make_user: MakeUser, admin: asyncpg.Connection, operations: list[Any]
) -> None:
    """Any sequence of operations by several users never reads or changes another's rows."""
    users = [await make_user() for _ in range(3)]
    owned: dict[uuid.UUID, str] = {}
    for user in users:
        owned[(await store.create_conversation(user)).id] = user
    for action, who, which in operations:
        actor = users[who]
        known = list(owned)
        target = known[which % len(known)]
        before = {u: await snapshot(admin, u) for u in users if u != actor}
        try:
            if action == "create":
                owned[(await store.create_conversation(actor)).id] = actor
            elif action == "add":
                message = await store.add_message(actor, target, "user", "hello")
                assert owned[target] == actor and message.user_id == actor
            elif action == "history":
                page = await store.get_history(actor, target)
                assert all(m.user_id == actor for m in page.items)
            elif action == "get":
                assert (await store.get_conversation(actor, target)).user_id == actor
            elif action == "list":
                page_c = await store.list_conversations(actor, status="active")
                assert all(c.user_id == actor for c in page_c.items)
            elif action == "archive":
                assert (await store.archive_conversation(actor, target)).user_id == actor
            elif action == "restore":
                assert (await store.restore_conversation(actor, target)).user_id == actor
            elif action == "delete":
                await store.delete_conversation(actor, target)
                assert owned[target] == actor
        except ConversationNotFound:
            # Only a foreign (or already deleted) conversation may be "not found".
            still_there = await admin.fetchval(
                "SELECT user_id FROM conversations WHERE id = $1", target
            )
            assert still_there != actor
        except ChatStoreError as error:
            assert error.__class__.__name__ == "ConversationArchived"
            assert owned[target] == actor
        after = {u: await snapshot(admin, u) for u in users if u != actor}
        assert after == before, f"{action} by one user changed another user's rows"
