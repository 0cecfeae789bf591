"""The round-trip budget catches an extra round trip and an N+1 (injected here).

The budget is tests/integration/round_trip_budget.json, enforced for every
operation by tests/integration/test_round_trips.py. These tests inject each
regression into a real ChatStore behind the counting proxy (tests/pgproxy.py)
and show the same budget comparison rejecting it; the unchanged store, through
the same code, passes (so the comparison is not rigged to fail).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from chat_storage import ChatStore, Conversation, create_engine
from chat_storage.cursor import Page
from tests.conftest import MakeUser
from tests.pgproxy import CountingProxy

BUDGET_PATH = Path(__file__).resolve().parents[1] / "integration" / "round_trip_budget.json"


def budget_violations(name: str, round_trips: int, executes: int) -> list[str]:
    """The round-trip budget's verdict on one warmed-up call of ``name``."""
    allowed = json.loads(BUDGET_PATH.read_text())[name]
    problems = []
    if round_trips > allowed:
        problems.append(f"{name}: {round_trips} round trips per call (budget {allowed})")
    if executes > allowed:
        problems.append(f"{name}: {executes} statements per call (budget {allowed})")
    return problems


async def count(
    database_url: str,
    operation: Callable[[ChatStore], Awaitable[object]],
    store_class: type[ChatStore] = ChatStore,
    **engine_options: Any,
) -> tuple[int, int]:
    """(round trips, statements) of one warmed-up ``operation`` on a one-connection store."""
    url = make_url(database_url)
    proxy = CountingProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied_url = url.set(host="127.0.0.1", port=proxy.port, query={"sslmode": "disable"})
    engine = create_engine(
        database_url=proxied_url.render_as_string(hide_password=False),
        pool_size=1,
        max_overflow=0,
        **engine_options,
    )
    try:
        store = store_class(engine)
        await operation(store)  # prepares the statement on the connection
        proxy.counts.reset()
        await operation(store)
        return proxy.counts.round_trips, proxy.counts.messages["E"]
    finally:
        await engine.dispose()
        await proxy.stop()


class NPlusOneStore(ChatStore):
    """Injected regression: listing re-reads each conversation with its own query."""

    async def list_conversations(self, user_id: str, **kwargs: Any) -> Page[Conversation]:
        page = await super().list_conversations(user_id, **kwargs)
        items = [await self.get_conversation(user_id, c.id) for c in page.items]
        return Page(items, page.next_cursor)


async def test_pre_ping_extra_round_trip_fails_budget(
    database_url: str, make_user: MakeUser
) -> None:
    """pool_pre_ping=True adds round trips to add_message; the budget rejects it."""
    user = await make_user()
    setup = create_engine(database_url=database_url, pool_size=1, max_overflow=0)
    conversation = await ChatStore(setup).create_conversation(user)
    await setup.dispose()

    async def add(store: ChatStore) -> None:
        await store.add_message(user, conversation.id, "user", "hello")

    clean = await count(database_url, add)
    assert not budget_violations("add_message", *clean), clean
    injected = await count(database_url, add, pool_pre_ping=True)
    problems = budget_violations("add_message", *injected)
    print("\nbudget output with pre-ping on:", problems)
    assert any("round trips" in p for p in problems), problems


async def test_n_plus_one_listing_fails_budget(database_url: str, make_user: MakeUser) -> None:
    """A listing that queries once per conversation fails the statement budget."""
    user = await make_user()
    setup = create_engine(database_url=database_url, pool_size=1, max_overflow=0)
    for _ in range(3):
        await ChatStore(setup).create_conversation(user)
    await setup.dispose()

    async def listing(store: ChatStore) -> None:
        assert len((await store.list_conversations(user, limit=10)).items) == 3

    clean = await count(database_url, listing)
    assert not budget_violations("list_conversations", *clean), clean
    injected = await count(database_url, listing, NPlusOneStore)
    problems = budget_violations("list_conversations", *injected)
    print("\nbudget output with an N+1 listing:", problems)
    assert any("statements" in p for p in problems), problems
