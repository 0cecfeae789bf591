"""Query plans at a realistic size: every hot statement is served by its index."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from chat_storage import ConversationStatus
from chat_storage.migrations import upgrade
from chat_storage.queries.base import Plan
from chat_storage.queries.conversations import (
    plan_create_conversation,
    plan_delete_conversation,
    plan_get_conversation,
    plan_list_conversations,
    plan_set_status,
)
from chat_storage.queries.messages import plan_add_message, plan_get_history
from devdb import ServerInfo, scratch_database
from tests.app_schema import create_app_tables

USERS, CONVERSATIONS_PER_USER, MESSAGES_PER_CONVERSATION = 490, 10, 20
LONG_CONVERSATION = 3000  # messages in one conversation of plan-long
HEAVY_USER_CONVERSATIONS = 1000  # conversations of plan-heavy

# About 103k messages with the long tail real chats have: most conversations are
# short, one has thousands of messages, one user has a thousand conversations.
SEED = f"""
INSERT INTO users (id, email)
SELECT 'plan-user-' || u, 'plan' || u || '@example.com' FROM generate_series(1, {USERS}) u;
INSERT INTO users (id, email) VALUES ('plan-long', 'long@example.com'),
                                     ('plan-heavy', 'heavy@example.com');
INSERT INTO conversations (user_id, status, updated_at, last_seq)
SELECT 'plan-user-' || u, CASE WHEN c % 5 = 0 THEN 'archived' ELSE 'active' END,
       now() - (u * c) * interval '1 minute', {MESSAGES_PER_CONVERSATION}
FROM generate_series(1, {USERS}) u, generate_series(1, {CONVERSATIONS_PER_USER}) c;
INSERT INTO conversations (user_id, last_seq) VALUES ('plan-long', {LONG_CONVERSATION});
INSERT INTO conversations (user_id, updated_at, last_seq)
SELECT 'plan-heavy', now() - c * interval '1 second', 2
FROM generate_series(1, {HEAVY_USER_CONVERSATIONS}) c;
INSERT INTO messages (conversation_id, user_id, role, content, seq)
SELECT c.id, c.user_id, CASE WHEN s % 2 = 0 THEN 'assistant' ELSE 'user' END,
       repeat('message text ', 10), s
FROM conversations c, generate_series(1, c.last_seq) s;
ANALYZE;
"""


@pytest.fixture(scope="module")
def seeded_url(pg_server: ServerInfo) -> Iterator[str]:
    """A database with about 103k messages, long tail included, analysed."""
    with scratch_database(pg_server.url, prefix="chat_plans") as url:
        asyncio.run(create_app_tables(url))
        upgrade(url)
        asyncio.run(_execute(url, SEED))
        yield url


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def conn(seeded_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(seeded_url)
    yield connection
    await connection.close()


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


async def explain(conn: asyncpg.Connection, plan: Plan[Any]) -> list[dict[str, Any]]:
    sql, _ = plan.statement.compile()
    raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *plan.args())
    return list(nodes(json.loads(raw)[0]["Plan"]))


async def some_conversation(
    conn: asyncpg.Connection, user: str = "plan-user-7"
) -> tuple[str, uuid.UUID]:
    row = await conn.fetchrow(
        "SELECT user_id, id FROM conversations WHERE status = 'active' AND user_id = $1 "
        "ORDER BY id LIMIT 1",
        user,
    )
    return row["user_id"], row["id"]


def assert_no_sort(found: list[dict[str, Any]]) -> None:
    sorts = [n for n in found if n["Node Type"] in ("Sort", "Incremental Sort")]
    assert not sorts, "the index should deliver rows in order"


def assert_indexed(found: list[dict[str, Any]], *indexes: str) -> None:
    seq_scans = [
        n["Relation Name"]
        for n in found
        if n["Node Type"] == "Seq Scan" and n.get("Relation Name") in ("messages", "conversations")
    ]
    assert not seq_scans, f"sequential scan on {seq_scans}"
    used = {n.get("Index Name") for n in found}
    for index in indexes:
        assert index in used, f"{index} not used; plan used {used - {None}}"


async def test_history_read_of_short_conversation_is_indexed(conn: asyncpg.Connection) -> None:
    """A short conversation's history is found by index after a primary-key owner check.

    With 20 rows per conversation the planner may fetch them through either
    conversation_id index and sort them; both read only that conversation.
    """
    user, conversation = await some_conversation(conn)
    found = await explain(conn, plan_get_history(user_id=user, conversation_id=conversation))
    assert_indexed(found, "conversations_pkey")
    used = {n.get("Index Name") for n in found}
    assert used & {"uq_messages_conversation_seq", "idx_messages_conversation_created"}


async def test_history_read_of_long_conversation_walks_sequence_index(
    conn: asyncpg.Connection,
) -> None:
    """A 3000-message conversation's latest page walks the seq index, unsorted."""
    user, conversation = await some_conversation(conn, "plan-long")
    found = await explain(conn, plan_get_history(user_id=user, conversation_id=conversation))
    assert_indexed(found, "uq_messages_conversation_seq", "conversations_pkey")
    assert_no_sort(found)


async def test_history_next_page_uses_sequence_index(conn: asyncpg.Connection) -> None:
    """A history page before a cursor is still an index range scan."""
    from chat_storage.cursor import encode_history_cursor

    user, conversation = await some_conversation(conn, "plan-long")
    plan = plan_get_history(
        user_id=user, conversation_id=conversation, cursor=encode_history_cursor(1500)
    )
    found = await explain(conn, plan)
    assert_indexed(found, "uq_messages_conversation_seq")
    assert_no_sort(found)


async def test_listing_uses_recent_index(conn: asyncpg.Connection) -> None:
    """Listing a typical user's conversations goes through idx_conversations_user_status_recent."""
    user, _ = await some_conversation(conn)
    found = await explain(conn, plan_list_conversations(user_id=user))
    assert_indexed(found, "idx_conversations_user_status_recent")


async def test_listing_of_heavy_user_needs_no_sort(conn: asyncpg.Connection) -> None:
    """A user with 1000 conversations gets the first 50 by walking the index, unsorted."""
    found = await explain(conn, plan_list_conversations(user_id="plan-heavy"))
    assert_indexed(found, "idx_conversations_user_status_recent")
    assert_no_sort(found)


async def test_listing_next_page_uses_recent_index(conn: asyncpg.Connection) -> None:
    """A listing page after a cursor is an index range scan too."""
    from datetime import UTC, datetime

    from chat_storage.cursor import encode_list_cursor

    cursor = encode_list_cursor(datetime.now(UTC), uuid.uuid4())
    found = await explain(conn, plan_list_conversations(user_id="plan-heavy", cursor=cursor))
    assert_indexed(found, "idx_conversations_user_status_recent")
    assert_no_sort(found)


async def test_append_uses_primary_keys(conn: asyncpg.Connection) -> None:
    """add_message finds its conversation and any replay by primary key."""
    user, conversation = await some_conversation(conn)
    plan = plan_add_message(user_id=user, conversation_id=conversation, role="user", content="x")
    assert_indexed(await explain(conn, plan), "conversations_pkey", "messages_pkey")


@pytest.mark.parametrize("status", list(ConversationStatus))
async def test_status_changes_use_primary_key(
    conn: asyncpg.Connection, status: ConversationStatus
) -> None:
    """Archive and restore update one row found by primary key."""
    user, conversation = await some_conversation(conn)
    plan = plan_set_status(user_id=user, conversation_id=conversation, status=status)
    assert_indexed(await explain(conn, plan), "conversations_pkey")


async def test_get_and_delete_use_primary_key(conn: asyncpg.Connection) -> None:
    """Fetching and deleting a conversation are primary-key lookups."""
    user, conversation = await some_conversation(conn)
    for plan in (
        plan_get_conversation(user_id=user, conversation_id=conversation),
        plan_delete_conversation(user_id=user, conversation_id=conversation),
    ):
        assert_indexed(await explain(conn, plan), "conversations_pkey")


async def test_create_scans_nothing(conn: asyncpg.Connection) -> None:
    """Creating a conversation is a plain insert: no scan of either table."""
    user, _ = await some_conversation(conn)
    assert_indexed(await explain(conn, plan_create_conversation(user_id=user)))
