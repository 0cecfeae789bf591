"""Behind PgBouncer in transaction mode (what Neon's -pooler endpoint runs)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from chat_storage import ChatStore, ChatStoreError, create_engine
from tests.conftest import MakeUser
from tests.pgbouncer import pgbouncer


@pytest.fixture(scope="module")
def bouncer_url(database_url: str) -> Iterator[str]:
    with pgbouncer(database_url) as url:
        yield url


async def chat_load(store: ChatStore, users: list[str], turns: int) -> list[BaseException]:
    """100 sessions, each a few chat turns; returns the errors seen."""
    errors: list[BaseException] = []

    async def session(user: str) -> None:
        try:
            conversation = (await store.create_conversation(user)).id
        except Exception as exc:  # collected, asserted below
            errors.append(exc)
            return
        for turn in range(turns):
            try:
                await store.get_history(user, conversation, limit=20)
                await store.add_message(user, conversation, "user", f"q{turn}")
                await store.add_message(user, conversation, "assistant", f"a{turn}")
                if turn % 3 == 0:
                    await store.list_conversations(user, limit=50)
            except Exception as exc:  # collected, asserted below
                errors.append(exc)

    await asyncio.gather(*(session(u) for u in users))
    return errors


async def test_hundred_sessions_through_pgbouncer_in_pooler_mode(
    bouncer_url: str, make_user: MakeUser
) -> None:
    """100 concurrent sessions with the plan's pool complete with no error at all."""
    engine = create_engine(database_url=bouncer_url, pooler_mode=True)
    try:
        store = ChatStore(engine)
        users = [await make_user() for _ in range(100)]
        errors = await chat_load(store, users, turns=5)
        assert errors == []
        conversation = (await store.list_conversations(users[0])).items[0]
        history = await store.get_history(users[0], conversation.id)
        assert [m.content for m in history.items][-2:] == ["q4", "a4"]
    finally:
        await engine.dispose()


async def test_without_pooler_mode_pgbouncer_breaks_prepared_statements(
    bouncer_url: str, make_user: MakeUser
) -> None:
    """Control: the default prepared-statement path fails behind transaction pooling,
    which is what pooler mode exists to avoid (and what this suite would catch)."""
    engine = create_engine(database_url=bouncer_url, pooler_mode=False)
    try:
        store = ChatStore(engine)
        users = [await make_user() for _ in range(100)]
        errors = await chat_load(store, users, turns=5)
        assert errors, "expected prepared-statement failures without pooler mode"
        assert all(isinstance(e, ChatStoreError) for e in errors)
    finally:
        await engine.dispose()
