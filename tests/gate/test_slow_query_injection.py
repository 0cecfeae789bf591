"""The slow-query injection used by ``python -m loadtests gate prove`` does what it claims.

``gate prove slow-query`` expects the statistical gate to fail on a run in
which ChatStore's history read waits on the server; this checks, without a
load run, that the patched store returns the same page and really waits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from chat_storage import ChatStore
from chat_storage.store import ChatStore as StoreClass
from loadtests.gate.slow_query import install
from tests.conftest import MakeUser


@pytest.fixture
def restore_store() -> Iterator[None]:
    original = StoreClass._execute
    yield
    StoreClass._execute = original  # type: ignore[method-assign]


async def test_injected_history_read_waits_on_server_and_returns_same_page(
    store: ChatStore, make_user: MakeUser, restore_store: None
) -> None:
    """With 50 ms injected, history takes at least 50 ms and returns the same messages."""
    user = await make_user()
    conversation = await store.create_conversation(user)
    for i in range(3):
        await store.add_message(user, conversation.id, "user", f"m{i}")
    before = await store.get_history(user, conversation.id, limit=2)
    install(50.0)
    started = time.perf_counter()
    after = await store.get_history(user, conversation.id, limit=2)
    elapsed = time.perf_counter() - started
    assert [m.id for m in after.items] == [m.id for m in before.items]
    assert after.next_cursor == before.next_cursor
    assert elapsed >= 0.05  # pg_sleep guarantees at least the delay; no upper bound
    await store.list_conversations(user)  # other statements are untouched
