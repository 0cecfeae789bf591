"""Round trips and statements per operation, counted on the wire (deterministic)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from chat_storage import ChatStore, create_engine
from tests.conftest import MakeUser
from tests.pgproxy import CountingProxy
from tests.store_operations import every_operation

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
    operations = await every_operation(store, user)
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
