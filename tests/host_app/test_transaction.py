"""A chat write and a host write in one SQLModel AsyncSession: one transaction.

The query functions take the host's session and never commit; the host's
commit or rollback decides for both. Run under ``-W error``: SQLModel's
AsyncSession deprecates ``execute()``, which the query functions must not call.
"""

from __future__ import annotations

import uuid

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from chat_storage import Conversation, MessageRole
from chat_storage.queries import add_message, create_conversation, get_history
from tests.host_app.models import User


async def _state(engine: AsyncEngine, user_id: str) -> tuple[str | None, int]:
    """The user's display name and how many conversations they own, read afresh."""
    async with AsyncSession(engine) as session:
        user = await session.get(User, user_id)
        assert user is not None
        owned = (
            select(func.count()).select_from(Conversation).where(Conversation.user_id == user_id)
        )
        return user.display_name, (await session.exec(owned)).one()


async def test_chat_and_host_writes_commit_together(
    host_engine: AsyncEngine, host_user: User
) -> None:
    """Conversation, message and the user's new name are all visible after one commit."""
    async with AsyncSession(host_engine, expire_on_commit=False) as session:
        user = await session.get(User, host_user.id)
        assert user is not None
        user.display_name = "Ada"
        conversation = await create_conversation(session, user_id=user.id)
        await add_message(
            session,
            user_id=user.id,
            conversation_id=conversation.id,
            role=MessageRole.USER,
            content="hello",
        )
        await session.commit()
    assert await _state(host_engine, host_user.id) == ("Ada", 1)
    async with AsyncSession(host_engine) as session:
        history = await get_history(session, user_id=host_user.id, conversation_id=conversation.id)
    assert [m.content for m in history.items] == ["hello"]


async def test_chat_and_host_writes_roll_back_together(
    host_engine: AsyncEngine, host_user: User
) -> None:
    """A rollback undoes the chat writes and the host's write alike."""
    async with AsyncSession(host_engine) as session:
        user = await session.get(User, host_user.id)
        assert user is not None
        user.display_name = "Grace"
        conversation = await create_conversation(session, user_id=user.id)
        await add_message(
            session,
            user_id=user.id,
            conversation_id=conversation.id,
            role=MessageRole.USER,
            content="hello",
        )
        await session.rollback()
    assert await _state(host_engine, host_user.id) == (None, 0)


async def test_pending_host_user_is_flushed_before_a_chat_write(host_engine: AsyncEngine) -> None:
    """A user added in the same session is visible to create_conversation (autoflush)."""
    user_id = f"user-{uuid.uuid4()}"
    async with AsyncSession(host_engine) as session:
        session.add(User(id=user_id, email=f"{user_id}@example.com"))
        conversation = await create_conversation(session, user_id=user_id)
        await session.commit()
    assert conversation.user_id == user_id
    assert await _state(host_engine, user_id) == (None, 1)
