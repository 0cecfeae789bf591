"""The plan's Pattern 3 through the ORM: ``session.add(Message(...))`` in the host's session.

At flush the message gets the next ``seq`` of its conversation and the
conversation's ``updated_at``/``last_seq`` are bumped, under the same rules as
``add_message``: the caller's own active conversation, or a typed error.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from chat_storage import (
    ContentTooLong,
    Conversation,
    ConversationArchived,
    ConversationNotFound,
    InvalidInput,
    Message,
    MessageRole,
)
from chat_storage.queries import archive_conversation, create_conversation, get_history
from tests.host_app.models import User


async def new_conversation(engine: AsyncEngine, user: User) -> Conversation:
    async with AsyncSession(engine) as session:
        conversation = await create_conversation(session, user_id=user.id)
        await session.commit()
    return conversation


async def test_plan_pattern_3_as_written(host_engine: AsyncEngine, host_user: User) -> None:
    """The plan's add_message body (UTC-aware time) commits a numbered message."""
    created = await new_conversation(host_engine, host_user)
    async with AsyncSession(host_engine, expire_on_commit=False) as session:
        async with session.begin():
            message = Message(
                conversation_id=created.id,
                user_id=host_user.id,
                role=MessageRole.USER,
                content="hello",
            )
            session.add(message)
            conversation = await session.get(Conversation, created.id)
            assert conversation is not None
            conversation.updated_at = datetime.now(UTC)
    assert message.seq == 1
    assert message.created_at is not None
    async with AsyncSession(host_engine) as session:
        history = await get_history(session, user_id=host_user.id, conversation_id=created.id)
    assert [(m.seq, m.content) for m in history.items] == [(1, "hello")]


async def test_orm_append_numbers_and_bumps_parent(
    host_engine: AsyncEngine, host_user: User
) -> None:
    """Two messages in one flush get seq 1 and 2; the loaded parent shows the bump."""
    created = await new_conversation(host_engine, host_user)
    async with AsyncSession(host_engine, expire_on_commit=False) as session:
        conversation = await session.get(Conversation, created.id)
        assert conversation is not None
        first = Message(
            conversation_id=created.id, user_id=host_user.id, role="user", content="question"
        )
        second = Message(
            conversation_id=created.id,
            user_id=host_user.id,
            role=MessageRole.ASSISTANT,
            content="answer",
            metadata_={"model": "m"},
        )
        session.add_all([first, second])
        await session.commit()
    assert (first.seq, second.seq) == (1, 2)
    assert conversation.last_seq == 2
    assert conversation.updated_at > created.updated_at
    async with AsyncSession(host_engine) as session:
        stored = (
            await session.exec(select(Conversation).where(Conversation.id == created.id))
        ).one()
    assert (stored.last_seq, stored.updated_at) == (2, conversation.updated_at)


async def test_orm_appends_in_concurrent_sessions_get_distinct_seqs(
    host_engine: AsyncEngine, host_user: User
) -> None:
    """Appenders in concurrent transactions queue on the conversation row: seq 1..n, no gap."""
    created = await new_conversation(host_engine, host_user)

    async def append(n: int) -> int:
        async with AsyncSession(host_engine, expire_on_commit=False) as session:
            message = Message(
                conversation_id=created.id, user_id=host_user.id, role="user", content=f"m{n}"
            )
            session.add(message)
            await session.commit()
            return message.seq

    seqs = await asyncio.gather(*(append(n) for n in range(8)))
    assert sorted(seqs) == list(range(1, 9))


async def test_orm_append_to_another_users_conversation_is_not_found(
    host_engine: AsyncEngine, host_user: User
) -> None:
    """A user_id that does not own the conversation: ConversationNotFound, nothing written."""
    created = await new_conversation(host_engine, host_user)
    async with AsyncSession(host_engine, expire_on_commit=False) as session:
        stranger = User(id=f"{host_user.id}-other", email=f"other-{host_user.email}")
        session.add(stranger)
        await session.commit()
    async with AsyncSession(host_engine) as session:
        session.add(
            Message(conversation_id=created.id, user_id=stranger.id, role="user", content="hi")
        )
        with pytest.raises(ConversationNotFound):
            await session.commit()
    async with AsyncSession(host_engine) as session:
        history = await get_history(session, user_id=host_user.id, conversation_id=created.id)
    assert history.items == []


async def test_orm_append_to_archived_conversation_is_refused(
    host_engine: AsyncEngine, host_user: User
) -> None:
    """An archived conversation: ConversationArchived, as add_message raises."""
    created = await new_conversation(host_engine, host_user)
    async with AsyncSession(host_engine) as session:
        await archive_conversation(session, user_id=host_user.id, conversation_id=created.id)
        await session.commit()
    async with AsyncSession(host_engine) as session:
        session.add(
            Message(conversation_id=created.id, user_id=host_user.id, role="user", content="hi")
        )
        with pytest.raises(ConversationArchived):
            await session.commit()


async def test_orm_append_checks_input_like_add_message(
    host_engine: AsyncEngine, host_user: User
) -> None:
    """Too long a user message, or a seq set by hand: typed errors, no raw database error."""
    created = await new_conversation(host_engine, host_user)
    async with AsyncSession(host_engine) as session:
        session.add(
            Message(
                conversation_id=created.id, user_id=host_user.id, role="user", content="x" * 1001
            )
        )
        with pytest.raises(ContentTooLong):
            await session.commit()
    async with AsyncSession(host_engine) as session:
        session.add(
            Message(
                conversation_id=created.id, user_id=host_user.id, role="user", content="x", seq=7
            )
        )
        with pytest.raises(InvalidInput, match="seq"):
            await session.commit()


async def test_orm_conversation_and_first_message_in_one_flush(
    host_engine: AsyncEngine, host_user: User
) -> None:
    """A new Conversation (id chosen client-side) and its first Message in one commit."""
    conversation_id = uuid.uuid4()
    async with AsyncSession(host_engine, expire_on_commit=False) as session:
        message = Message(
            conversation_id=conversation_id, user_id=host_user.id, role="user", content="hi"
        )
        session.add_all([message, Conversation(id=conversation_id, user_id=host_user.id)])
        await session.commit()
    assert message.seq == 1
