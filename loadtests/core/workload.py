"""The workload's vocabulary: operation names, message texts, seeded user ids.

The operation names are the product's own (``Statement.name``, the
``operation`` label of ``chat_storage_operation_duration_seconds`` and the span
name), so a report row, a benchmark column, a dashboard panel and a metric
series of one operation all carry the same word
(``tests/loadtests/test_core.py`` checks them against the statements).
"""

from __future__ import annotations

import random
from typing import Final

GET_HISTORY: Final = "get_history"
ADD_MESSAGE: Final = "add_message"
CREATE_CONVERSATION: Final = "create_conversation"
LIST_CONVERSATIONS: Final = "list_conversations"
ARCHIVE_CONVERSATION: Final = "archive_conversation"
#: Every operation the workload runs, in report order.
OPERATIONS: Final = (
    GET_HISTORY,
    ADD_MESSAGE,
    CREATE_CONVERSATION,
    LIST_CONVERSATIONS,
    ARCHIVE_CONVERSATION,
)
#: Operations whose absence from a run makes it fail (the run measured nothing).
REQUIRED: Final = (GET_HISTORY, ADD_MESSAGE)
#: The two paths: ChatStore, and the raw asyncpg reference running the same SQL.
STORE: Final = "store"
RAW: Final = "raw"

HISTORY_LIMIT: Final = 20
LIST_LIMIT: Final = 50
USER_PREFIX: Final = "loadtest-"

_WORDS: Final = (
    "the model answer question context token prompt memory window history reply "
    "latency database index page cursor user assistant message stream summary "
    "please explain why how what could would should example code result table"
).split()


def seeded_user_id(run_id: str, n: int) -> str:
    """The id of seeded user ``n`` of run ``run_id`` (all share the prefix)."""
    return f"{USER_PREFIX}{run_id}-{n:06d}"


def user_prefix(run_id: str) -> str:
    """The id prefix every seeded user of ``run_id`` has (for cleanup)."""
    return f"{USER_PREFIX}{run_id}-"


def _text(rng: random.Random, low: int, high: int) -> str:
    size = rng.randint(low, high)
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def user_text(rng: random.Random) -> str:
    """A user's message: 20 to 400 characters."""
    return _text(rng, 20, 400)


def assistant_text(rng: random.Random) -> str:
    """An assistant's reply: 200 to 2000 characters."""
    return _text(rng, 200, 2000)
