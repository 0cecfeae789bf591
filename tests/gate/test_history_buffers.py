"""Plan guard: a history read touches as many buffers at 1M messages as at 100k.

One scratch database is seeded to 100k messages, measured, grown to 1M and
measured again. At each size the same read is also measured with the index it
relies on dropped inside a transaction that is rolled back (DDL is
transactional in PostgreSQL): that is the injected regression, and the guard
must reject it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from chat_storage.migrations import upgrade
from devdb import ServerInfo, scratch_database
from tests.app_schema import create_app_tables
from tests.gate.history_buffers import (
    INTENDED_INDEX,
    LARGE,
    SMALL,
    Reading,
    buffer_problems,
    read_history_buffers,
    seed_sql,
)

Readings = dict[str, Reading]

#: Seeding 1M messages takes 30-80 s on a 2-core machine.
pytestmark = pytest.mark.slow


class _Rollback(Exception):
    """Ends the transaction in which the index was dropped."""


async def _read_without_index(conn: asyncpg.Connection, tag: str) -> Reading:
    reading: Reading | None = None
    try:
        async with conn.transaction():
            await conn.execute(f"DROP INDEX {INTENDED_INDEX}")
            reading = await read_history_buffers(conn, tag)
            raise _Rollback
    except _Rollback:
        pass
    assert reading is not None
    return reading


async def _measure(url: str) -> Readings:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(seed_sql(SMALL, "small"))
        readings = {
            "small": await read_history_buffers(conn, "small"),
            "small_dropped": await _read_without_index(conn, "small"),
        }
        await conn.execute(seed_sql(LARGE - SMALL, "large"))
        readings["large"] = await read_history_buffers(conn, "large")
        readings["large_dropped"] = await _read_without_index(conn, "large")
        return readings
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def readings(pg_server: ServerInfo) -> Iterator[Readings]:
    """History-read buffer readings at 100k and 1M messages, with and without the index."""
    with scratch_database(pg_server.url, prefix="chat_buffers") as url:
        asyncio.run(create_app_tables(url))
        upgrade(url)
        found = asyncio.run(_measure(url))
        print("\nhistory read buffers:", {k: v.buffers for k, v in found.items()})
        yield found


def test_history_read_buffers_do_not_grow_with_table_size(readings: Readings) -> None:
    """The latest page of the longest conversation costs the same pages at 100k and 1M."""
    problems = buffer_problems(readings["small"], readings["large"])
    assert not problems, problems


def test_dropped_history_index_fails_the_buffer_guard(readings: Readings) -> None:
    """Without uq_messages_conversation_seq the guard reports growth and the lost index."""
    problems = buffer_problems(readings["small_dropped"], readings["large_dropped"])
    print("\n".join(["guard output with the index dropped:", *problems]))
    assert any("grow with table size" in p for p in problems), problems
    assert any(f"does not use {INTENDED_INDEX}" in p for p in problems), problems
