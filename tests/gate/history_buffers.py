"""The buffers a history read touches, measured with EXPLAIN (ANALYZE, BUFFERS).

Buffer counts are deterministic (pages, not time): the same query over the same
rows touches the same pages whether they are cached or not (hit + read). A
history page served by ``uq_messages_conversation_seq`` touches the B-tree path
to the conversation's newest rows and the heap pages of ``limit`` rows: a
constant, whatever the table's or the conversation's size. Served any other way
(another index and a sort, a bitmap scan, a sequential scan) it touches every
row of the conversation, or of the table.

The seed grows the way real data does: at 10x the messages the longest
conversation is also 10x longer (the long tail), so "does not grow with table
size" covers both the table and the conversation the user is reading.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from chat_storage.queries.messages import plan_get_history

SMALL, LARGE = 100_000, 1_000_000
#: Per seeded batch: conversations of 20 messages, plus one of batch size / 33.
SHORT_LENGTH = 20
#: Growth allowed from the small to the large table: each B-tree on the path
#: (conversations_pkey, the messages index) may gain one level at 10x rows.
LEVEL_SLACK = 2
#: Pages a 20-message page may touch at all: two B-tree descents (3-4 levels
#: each), ~21 heap tuples on a handful of pages, the conversation's row.
ABSOLUTE_MAX = 40
INTENDED_INDEX = "uq_messages_conversation_seq"


def seed_sql(messages: int, tag: str) -> str:
    """SQL adding ``messages`` messages: user ``buf-<tag>-long``'s long conversation
    (messages/33 of them), and conversations of 20 for user ``buf-<tag>``."""
    long_length = messages // 33
    short = (messages - long_length) // SHORT_LENGTH
    return f"""
INSERT INTO users (id, email) VALUES ('buf-{tag}', '{tag}@example.com'),
                                     ('buf-{tag}-long', '{tag}-long@example.com');
INSERT INTO conversations (user_id, last_seq)
SELECT 'buf-{tag}', {SHORT_LENGTH} FROM generate_series(1, {short});
INSERT INTO conversations (user_id, last_seq) VALUES ('buf-{tag}-long', {long_length});
INSERT INTO messages (conversation_id, user_id, role, content, seq)
SELECT c.id, c.user_id, CASE WHEN s % 2 = 0 THEN 'assistant' ELSE 'user' END,
       'message text of a realistic length, about eighty characters long, for the heap.', s
FROM conversations c, generate_series(1, c.last_seq) s
WHERE c.user_id IN ('buf-{tag}', 'buf-{tag}-long');
ANALYZE conversations, messages;
"""


@dataclass(frozen=True, slots=True)
class Reading:
    """One history read: pages touched, and the plan's indexes and node types."""

    buffers: int
    indexes: frozenset[str]
    node_types: frozenset[str]
    seq_scans: frozenset[str]


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def read_history_buffers(conn: asyncpg.Connection, tag: str) -> Reading:
    """EXPLAIN ANALYZE the latest-page history read of the long conversation ``tag``."""
    user = f"buf-{tag}-long"
    conversation = await conn.fetchval("SELECT id FROM conversations WHERE user_id = $1", user)
    plan = plan_get_history(user_id=user, conversation_id=conversation, limit=20)
    sql, _ = plan.statement.compile()
    explain = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql
    await conn.fetchval(explain, *plan.args())  # the first run may also read the catalogue
    raw = await conn.fetchval(explain, *plan.args())
    top = json.loads(raw)[0]["Plan"]
    nodes = list(_nodes(top))
    return Reading(
        buffers=int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0)),
        indexes=frozenset(n["Index Name"] for n in nodes if "Index Name" in n),
        node_types=frozenset(n["Node Type"] for n in nodes),
        seq_scans=frozenset(
            n.get("Relation Name", "?") for n in nodes if n["Node Type"] == "Seq Scan"
        ),
    )


def buffer_problems(small: Reading, large: Reading) -> list[str]:
    """Why the history read's cost depends on data size (empty: it does not)."""
    problems = []
    for label, reading in (("100k", small), ("1M", large)):
        if INTENDED_INDEX not in reading.indexes:
            problems.append(
                f"{label}: history read does not use {INTENDED_INDEX} "
                f"(indexes used: {sorted(reading.indexes) or 'none'})"
            )
        if reading.seq_scans & {"messages", "conversations"}:
            problems.append(f"{label}: sequential scan on {sorted(reading.seq_scans)}")
        if reading.node_types & {"Sort", "Incremental Sort"}:
            problems.append(f"{label}: history read sorts the conversation's messages")
        if reading.buffers > ABSOLUTE_MAX:
            problems.append(
                f"{label}: history read touched {reading.buffers} buffers (max {ABSOLUTE_MAX})"
            )
    if large.buffers > small.buffers + LEVEL_SLACK:
        problems.append(
            f"history read buffers grow with table size: {small.buffers} at 100k messages, "
            f"{large.buffers} at 1M (allowed +{LEVEL_SLACK})"
        )
    return problems
