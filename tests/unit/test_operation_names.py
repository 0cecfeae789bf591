"""A rejected call is counted under its statement's name, for every ChatStore operation.

No server: planning rejects the argument before a connection is asked for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from chat_storage import ChatStore, InvalidIdentifier, InvalidInput, StoreMetrics, create_engine
from chat_storage.queries import base

CONVERSATION = "00000000-0000-0000-0000-000000000001"

#: Each ChatStore operation, called with an argument its plan rejects.
REJECTED: dict[str, Callable[[ChatStore], Awaitable[Any]]] = {
    "create_conversation": lambda s: s.create_conversation(""),
    "get_conversation": lambda s: s.get_conversation("", CONVERSATION),
    "list_conversations": lambda s: s.list_conversations(""),
    "add_message": lambda s: s.add_message("", CONVERSATION, "user", "hi"),
    "get_history": lambda s: s.get_history("", CONVERSATION),
    "archive_conversation": lambda s: s.archive_conversation("", CONVERSATION),
    "restore_conversation": lambda s: s.restore_conversation("", CONVERSATION),
    "delete_conversation": lambda s: s.delete_conversation("", CONVERSATION),
    "archive_inactive_conversations": lambda s: s.archive_inactive_conversations(
        idle_for=timedelta(seconds=-1)
    ),
}


@pytest.mark.parametrize("operation", sorted(REJECTED))
async def test_rejection_is_counted_under_the_operations_statement_name(operation: str) -> None:
    """The reject and error counters carry the name the operation's statement runs under."""
    registry = CollectorRegistry()
    engine = create_engine(database_url="postgresql://nobody@127.0.0.1:1/none")
    try:
        store = ChatStore(engine, metrics=StoreMetrics(registry))
        with pytest.raises(InvalidInput) as raised:
            await REJECTED[operation](store)
    finally:
        await engine.dispose()
    labels = {"operation": operation, "error_type": type(raised.value).__name__}
    assert registry.get_sample_value("chat_storage_validation_rejects_total", labels) == 1
    assert registry.get_sample_value("chat_storage_errors_total", labels) == 1


def test_every_marked_plan_function_names_its_statement() -> None:
    """operation_name() is the name of the statement the plan function builds."""
    from chat_storage import queries

    planners = [getattr(queries, name) for name in queries.__all__ if name.startswith("plan_")]
    marked = [p for p in planners if p in base._PLANNED]
    assert {p.__name__ for p in planners} - {p.__name__ for p in marked} == {"plan_set_status"}
    for planner in marked:
        assert base.operation_name(planner) == base._PLANNED[planner]().name
    assert base.operation_name(queries.plan_archive_inactive_batch) == (
        "archive_inactive_conversations"
    )
    with pytest.raises(InvalidIdentifier):
        queries.plan_get_history(user_id="", conversation_id=CONVERSATION)
