"""Hostile and broken input: each gets its typed error, writes nothing, breaks nothing."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from chat_storage import (
    ChatStore,
    ChatStoreError,
    ContentTooLong,
    ConversationArchived,
    ConversationNotFound,
    IdempotencyConflict,
    InvalidContent,
    InvalidCursor,
    InvalidIdentifier,
    InvalidInput,
    InvalidLimit,
    InvalidMetadata,
    InvalidRole,
)
from chat_storage.cursor import encode_history_cursor
from tests.conftest import MakeUser


@dataclass
class World:
    """Two users; one has an active, an archived and a deleted conversation."""

    store: ChatStore
    owner: str
    other: str
    active: uuid.UUID
    archived: uuid.UUID
    deleted: uuid.UUID
    other_conversation: uuid.UUID
    used_message_id: uuid.UUID


def nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {}
    root = node
    for _ in range(depth):
        node["x"] = {}
        node = node["x"]
    return root


Call = Callable[[World], Awaitable[object]]

CASES: list[tuple[str, Call, type[ChatStoreError]]] = [
    ("user message of 1001 chars", lambda w: w.store.add_message(w.owner, w.active, "user", "x" * 1001), ContentTooLong),
    ("assistant message over the cap", lambda w: w.store.add_message(w.owner, w.active, "assistant", "x" * 100_001), ContentTooLong),
    ("empty content", lambda w: w.store.add_message(w.owner, w.active, "user", ""), InvalidContent),
    ("blank content", lambda w: w.store.add_message(w.owner, w.active, "user", " \n\t "), InvalidContent),
    ("NUL in content", lambda w: w.store.add_message(w.owner, w.active, "user", "a\x00b"), InvalidContent),
    ("lone surrogate", lambda w: w.store.add_message(w.owner, w.active, "user", "bad \ud83d"), InvalidContent),
    ("content not a string", lambda w: w.store.add_message(w.owner, w.active, "user", b"bytes"), InvalidContent),  # type: ignore[arg-type]
    ("role system", lambda w: w.store.add_message(w.owner, w.active, "system", "hi"), InvalidRole),
    ("role upper case", lambda w: w.store.add_message(w.owner, w.active, "USER", "hi"), InvalidRole),
    ("metadata a list", lambda w: w.store.add_message(w.owner, w.active, "user", "hi", metadata=[1]), InvalidMetadata),  # type: ignore[arg-type]
    ("metadata a string", lambda w: w.store.add_message(w.owner, w.active, "user", "hi", metadata="{}"), InvalidMetadata),  # type: ignore[arg-type]
    ("metadata huge", lambda w: w.store.add_message(w.owner, w.active, "user", "hi", metadata={"k": "v" * 20_000}), InvalidMetadata),
    ("metadata nested 100 deep", lambda w: w.store.add_message(w.owner, w.active, "user", "hi", metadata=nested(100)), InvalidMetadata),
    ("metadata NaN", lambda w: w.store.add_message(w.owner, w.active, "user", "hi", metadata={"n": float("inf")}), InvalidMetadata),
    ("metadata NUL", lambda w: w.store.add_message(w.owner, w.active, "user", "hi", metadata={"k\x00": 1}), InvalidMetadata),
    ("malformed conversation id", lambda w: w.store.add_message(w.owner, "not-a-uuid", "user", "hi"), InvalidIdentifier),  # type: ignore[arg-type]
    ("SQL in conversation id", lambda w: w.store.get_history(w.owner, "'; DROP TABLE messages; --"), InvalidIdentifier),  # type: ignore[arg-type]
    ("malformed message id", lambda w: w.store.add_message(w.owner, w.active, "user", "hi", message_id="123"), InvalidIdentifier),  # type: ignore[arg-type]
    ("empty user id", lambda w: w.store.create_conversation(""), InvalidIdentifier),
    ("user id of 256 chars", lambda w: w.store.list_conversations("u" * 256), InvalidIdentifier),
    ("SQL-looking user id", lambda w: w.store.get_conversation("x' OR '1'='1", w.active), ConversationNotFound),
    ("history limit 0", lambda w: w.store.get_history(w.owner, w.active, limit=0), InvalidLimit),
    ("history limit negative", lambda w: w.store.get_history(w.owner, w.active, limit=-5), InvalidLimit),
    ("listing limit huge", lambda w: w.store.list_conversations(w.owner, limit=10**9), InvalidLimit),
    ("garbage cursor", lambda w: w.store.get_history(w.owner, w.active, cursor="%%%%"), InvalidCursor),
    ("history cursor for listing", lambda w: w.store.list_conversations(w.owner, cursor=encode_history_cursor(3)), InvalidCursor),
    ("unknown status", lambda w: w.store.list_conversations(w.owner, status="deleted"), InvalidInput),
    ("other user's conversation: append", lambda w: w.store.add_message(w.other, w.active, "user", "hi"), ConversationNotFound),
    ("other user's conversation: history", lambda w: w.store.get_history(w.other, w.active), ConversationNotFound),
    ("other user's conversation: delete", lambda w: w.store.delete_conversation(w.other, w.active), ConversationNotFound),
    ("archived conversation: append", lambda w: w.store.add_message(w.owner, w.archived, "user", "hi"), ConversationArchived),
    ("deleted conversation: append", lambda w: w.store.add_message(w.owner, w.deleted, "user", "hi"), ConversationNotFound),
    ("deleted conversation: restore", lambda w: w.store.restore_conversation(w.owner, w.deleted), ConversationNotFound),
    ("message id reused elsewhere", lambda w: w.store.add_message(w.owner, w.archived, "user", "x", message_id=w.used_message_id), IdempotencyConflict),
    ("message id of another user", lambda w: w.store.add_message(w.other, w.other_conversation, "user", "x", message_id=w.used_message_id), IdempotencyConflict),
]  # fmt: skip


@pytest.fixture
async def world(store: ChatStore, make_user: MakeUser) -> World:
    owner, other = await make_user(), await make_user()
    active = (await store.create_conversation(owner)).id
    archived = (await store.create_conversation(owner)).id
    deleted = (await store.create_conversation(owner)).id
    other_conversation = (await store.create_conversation(other)).id
    used = uuid.uuid4()
    await store.add_message(owner, active, "user", "first", message_id=used)
    await store.archive_conversation(owner, archived)
    await store.delete_conversation(owner, deleted)
    return World(store, owner, other, active, archived, deleted, other_conversation, used)


async def table_state(admin: asyncpg.Connection) -> tuple[Any, ...]:
    return (
        await admin.fetchval("SELECT count(*) FROM messages"),
        await admin.fetchval("SELECT count(*) FROM conversations"),
        await admin.fetchval("SELECT coalesce(sum(last_seq), 0) FROM conversations"),
        await admin.fetchval("SELECT max(updated_at) FROM conversations"),
    )


def test_there_are_at_least_25_cases() -> None:
    """The table covers at least 25 hostile or broken inputs."""
    assert len(CASES) >= 25


@pytest.mark.parametrize(("name", "call", "error"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input_is_refused_cleanly(
    world: World,
    admin: asyncpg.Connection,
    name: str,
    call: Call,
    error: type[ChatStoreError],
) -> None:
    """The input raises its typed error, writes no row, and the store keeps working."""
    before = await table_state(admin)
    with pytest.raises(error) as raised:
        await call(world)
    assert type(raised.value) is error, f"{name}: got {type(raised.value).__name__}"
    assert str(raised.value)  # says what was wrong
    assert await table_state(admin) == before
    page = await world.store.get_history(world.owner, world.active)
    assert [m.content for m in page.items] == ["first"]
