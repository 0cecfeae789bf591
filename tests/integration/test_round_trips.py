"""Round trips and statements per operation, counted on the wire (deterministic)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from schema import ChatStore, create_engine
from tests.conftest import MakeUser
from tests.pgproxy import CountingProxy

BUDGET = {
    k: v
    for k, v in json.loads((Path(__file__).with_name("round_trip_budget.json")).read_text()).items()
    if not k.startswith("_")
}


@pytest.fixture
async def proxied_store(database_url: str) -> AsyncIterator[tuple[ChatStore, CountingProxy]]:
    """A ChatStore whose single pooled connection passes through a counting proxy."""
    url = make_url(database_url)
    proxy = CountingProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    # sslmode=disable: the proxy reads the protocol, so it must stay in clear text.
    proxied = url.set(host="127.0.0.1", port=proxy.port, query={"sslmode": "disable"})
    engine = create_engine(
        database_url=proxied.render_as_string(hide_password=False), pool_size=1, max_overflow=0
    )
    try:
        yield ChatStore(engine), proxy
    finally:
        await engine.dispose()
        await proxy.stop()


async def test_every_operation_costs_one_round_trip(
    proxied_store: tuple[ChatStore, CountingProxy], make_user: MakeUser
) -> None:
    """In steady state each ChatStore operation sends one Execute and one Sync, no Parse."""
    store, proxy = proxied_store
    user = await make_user()
    seed = await store.create_conversation(user)
    for i in range(5):
        await store.add_message(user, seed.id, "user", f"seed {i}")
    for _ in range(3):
        await store.create_conversation(user)
    fixed_id = uuid.uuid4()
    await store.add_message(user, seed.id, "assistant", "fixed", message_id=fixed_id)
    history = await store.get_history(user, seed.id, limit=2)
    listing = await store.list_conversations(user, limit=2)
    assert history.next_cursor and listing.next_cursor

    async def delete() -> None:
        doomed = await store.create_conversation(user)
        proxy.counts.reset()
        await store.delete_conversation(user, doomed.id)

    operations: dict[str, Callable[[], Awaitable[object]]] = {
        "create_conversation": lambda: store.create_conversation(user),
        "get_conversation": lambda: store.get_conversation(user, seed.id),
        "list_conversations": lambda: store.list_conversations(user, limit=2),
        "list_conversations_next_page": lambda: store.list_conversations(
            user, limit=2, cursor=listing.next_cursor
        ),
        "add_message": lambda: store.add_message(user, seed.id, "user", "hello"),
        "add_message_replay": lambda: store.add_message(
            user, seed.id, "assistant", "fixed", message_id=fixed_id
        ),
        "get_history": lambda: store.get_history(user, seed.id, limit=2),
        "get_history_next_page": lambda: store.get_history(
            user, seed.id, limit=2, before=history.next_cursor
        ),
        "archive_conversation": lambda: store.archive_conversation(user, seed.id),
        "restore_conversation": lambda: store.restore_conversation(user, seed.id),
        "delete_conversation": delete,
        "archive_inactive_conversations": lambda: store.archive_inactive_conversations(
            idle_for=timedelta(days=3650)
        ),
    }
    assert set(operations) == set(BUDGET)
    measured: dict[str, tuple[int, int, int]] = {}
    for name, operation in operations.items():
        await operation()  # first call prepares the statement on this connection
        proxy.counts.reset()
        await operation()
        seen = proxy.counts.messages
        measured[name] = (proxy.counts.round_trips, seen["E"], seen["P"])
    print("\nround trips, executes, parses per operation:", measured)
    for name, (round_trips, executes, parses) in measured.items():
        assert round_trips == BUDGET[name], f"{name}: {round_trips} round trips"
        assert executes == BUDGET[name], f"{name}: {executes} statements"
        assert parses == 0, f"{name}: statement re-prepared"
        assert proxy.counts.messages["Q"] == 0  # no simple-query BEGIN/COMMIT/ping
