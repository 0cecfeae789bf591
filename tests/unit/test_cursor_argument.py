"""Every paginated operation takes its page position as ``cursor=``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from chat_storage import ChatStore, queries
from chat_storage.queries.conversations import plan_list_conversations
from chat_storage.queries.messages import plan_get_history

PAGINATED: dict[str, Callable[..., Any]] = {
    "ChatStore.get_history": ChatStore.get_history,
    "ChatStore.list_conversations": ChatStore.list_conversations,
    "queries.get_history": queries.get_history,
    "queries.list_conversations": queries.list_conversations,
    "plan_get_history": plan_get_history,
    "plan_list_conversations": plan_list_conversations,
}


@pytest.mark.parametrize("name", sorted(PAGINATED))
def test_paginated_operations_take_cursor(name: str) -> None:
    """The page position is the keyword-only ``cursor``, default None, never ``before``."""
    parameters = inspect.signature(PAGINATED[name]).parameters
    assert "before" not in parameters
    cursor = parameters["cursor"]
    assert cursor.kind is inspect.Parameter.KEYWORD_ONLY
    assert cursor.default is None


def test_history_plan_reads_its_cursor() -> None:
    """A history cursor passed as ``cursor=`` positions the page."""
    from chat_storage.cursor import encode_history_cursor

    plan = plan_get_history(
        user_id="user-1",
        conversation_id="00000000-0000-0000-0000-000000000001",
        cursor=encode_history_cursor(42),
    )
    assert plan.params["p_before"] == 42
