"""A retry that changes what was said is refused; cursors stay with their listing."""

from __future__ import annotations

import uuid

import pytest

from chat_storage import ChatStore, IdempotencyConflict, InvalidCursor
from tests.conftest import MakeUser


async def test_identical_retry_returns_the_stored_message(store: ChatStore, user_id: str) -> None:
    """The same message_id, role, content and metadata replays the first message."""
    conversation = await store.create_conversation(user_id)
    message_id = uuid.uuid4()
    first = await store.add_message(
        user_id,
        conversation.id,
        "user",
        "hello",
        metadata={"a": 1, "b": [1.0, "x"]},
        message_id=message_id,
    )
    # Key order and 1 vs 1.0 are the same JSON value once stored.
    again = await store.add_message(
        user_id,
        conversation.id,
        "user",
        "hello",
        metadata={"b": [1, "x"], "a": 1.0},
        message_id=message_id,
    )
    assert (again.id, again.seq, again.content) == (first.id, first.seq, "hello")


@pytest.mark.parametrize(
    "change",
    [
        {"content": "hello, changed"},
        {"role": "assistant"},
        {"metadata": {"a": 2}},
        {"metadata": None},
    ],
    ids=["content", "role", "metadata", "metadata-dropped"],
)
async def test_changed_retry_is_a_conflict(
    store: ChatStore, user_id: str, change: dict[str, object]
) -> None:
    """A retry whose role, content or metadata differ raises IdempotencyConflict, writes nothing."""
    conversation = await store.create_conversation(user_id)
    message_id = uuid.uuid4()
    call: dict[str, object] = {"role": "user", "content": "hello", "metadata": {"a": 1}}
    await store.add_message(user_id, conversation.id, message_id=message_id, **call)  # type: ignore[arg-type]
    with pytest.raises(IdempotencyConflict, match="different message"):
        await store.add_message(
            user_id,
            conversation.id,
            message_id=message_id,
            **{**call, **change},  # type: ignore[arg-type]
        )
    page = await store.get_history(user_id, conversation.id)
    assert [(m.content, m.metadata_) for m in page.items] == [("hello", {"a": 1})]


async def test_retry_in_another_conversation_is_a_conflict(store: ChatStore, user_id: str) -> None:
    """The same message_id and text sent to another conversation is refused."""
    first = await store.create_conversation(user_id)
    second = await store.create_conversation(user_id)
    message_id = uuid.uuid4()
    await store.add_message(user_id, first.id, "user", "hello", message_id=message_id)
    with pytest.raises(IdempotencyConflict):
        await store.add_message(user_id, second.id, "user", "hello", message_id=message_id)
    assert (await store.get_history(user_id, second.id)).items == []


async def test_history_cursor_of_another_conversation(
    store: ChatStore, make_user: MakeUser
) -> None:
    """A history cursor from another conversation (the caller's or not) is InvalidCursor."""
    alice, bob = await make_user(), await make_user()
    mine, other = await store.create_conversation(alice), await store.create_conversation(alice)
    theirs = await store.create_conversation(bob)
    for conversation, owner in ((mine, alice), (other, alice), (theirs, bob)):
        for i in range(3):
            await store.add_message(owner, conversation.id, "user", f"m{i}")
    cursor = (await store.get_history(alice, mine.id, limit=1)).next_cursor
    assert cursor is not None
    assert len((await store.get_history(alice, mine.id, limit=1, cursor=cursor)).items) == 1
    with pytest.raises(InvalidCursor):
        await store.get_history(alice, other.id, limit=1, cursor=cursor)
    with pytest.raises(InvalidCursor):
        await store.get_history(bob, theirs.id, limit=1, cursor=cursor)


async def test_listing_cursor_of_another_listing(store: ChatStore, make_user: MakeUser) -> None:
    """A listing cursor is refused by another user's listing and by another status's."""
    alice, bob = await make_user(), await make_user()
    for owner in (alice, bob):
        for _ in range(3):
            await store.create_conversation(owner)
    cursor = (await store.list_conversations(alice, limit=1)).next_cursor
    assert cursor is not None
    assert len((await store.list_conversations(alice, limit=1, cursor=cursor)).items) == 1
    with pytest.raises(InvalidCursor):
        await store.list_conversations(bob, limit=1, cursor=cursor)
    with pytest.raises(InvalidCursor):
        await store.list_conversations(alice, status="archived", limit=1, cursor=cursor)
