"""The deterministic guards' scratch database and the record of where a
baseline was taken (machine, versions, date), shared by client_cost.py and
server_work.py."""

from __future__ import annotations

import asyncio
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import asyncpg

from loadtests.core.database import scratch_database_migrated
from loadtests.gate.regressions import Regression

#: The server version of the last scratch database made (for describe()).
_postgres = "unknown"


async def _run_sql(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _server_version(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


@contextmanager
def scratch_database(regression: Regression | None) -> Iterator[str]:
    """A migrated scratch database on DATABASE_URL's server (else an embedded
    one), with ``regression``'s SQL applied; its URL.

    Raises:
        loadtests.core.database.SetupError: no server could be reached or started.
    """
    with scratch_database_migrated(os.environ.get("DATABASE_URL")) as url:
        if regression is not None and regression.sql is not None:
            asyncio.run(_run_sql(url, regression.sql))
        # Asked now: describe() may run after the scratch database is dropped.
        global _postgres
        _postgres = asyncio.run(_server_version(url))
        yield url


def describe(**extra: Any) -> dict[str, Any]:
    """Machine, versions and date of a baseline being recorded now."""
    packages = ("sqlalchemy", "asyncpg")
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "postgresql": _postgres,
        **{name: metadata.version(name) for name in packages},
        **extra,
    }
