"""Regressions the deterministic guards must catch, applied at run time.

Each regression is a small, named change of a kind the gate once missed or
could miss (issue 23): work added to the client, to the server, to the rows a
read fetches, to its round trips, to the pool, to the locks an append holds,
to the statements it prepares. None edits a file: each is either SQL run on
the scratch database the guard builds (a trigger, a dropped index) or a patch
applied inside the guard's own process by :func:`apply`, wrapping the public
methods of asyncpg's ``Connection`` or ``ChatStore``, or one method of the
pool's queue. Wrapping the driver rather than the store's internals keeps them
valid however the store's hot path is arranged: every statement reaches the
server through ``asyncpg.Connection``.

A guard's process applies the regression named by the environment variable
:data:`ENV` (the guards' ``--regression`` option sets it). For pytest, this
module is also a plugin: ``-p loadtests.gate.regressions`` applies it at start.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

ENV: Final = "CHAT_STORAGE_GATE_REGRESSION"

#: Python loop iterations of the client-CPU regression: sized to more than double
#: the store's own client work per operation, the regression issue 23 describes
#: (docs/performance.md has the store's measured CPU per operation).
BUSY_ITERATIONS: Final = 450
#: The over-fetching read asks for this many times the rows it returns.
OVER_FETCH: Final = 5
_LIMIT = re.compile(r"\bLIMIT\s+\$(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Regression:
    """One injected regression, and the guard that exists to catch it."""

    name: str
    kind: str
    what: str
    guard: str
    #: Run on the scratch database after its migrations (None: none).
    sql: str | None = None
    #: Applied in the guard's process before the store is built (None: none).
    patch: Callable[[], None] | None = None


def _busy() -> int:
    total = 0
    for i in range(BUSY_ITERATIONS):
        total += i * i
    return total


def _patch_store_methods(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    from chat_storage import ChatStore

    for name in dir(ChatStore):
        method = getattr(ChatStore, name)
        if name.startswith("_") or not callable(method) or name in {"close", "dispose"}:
            continue
        import inspect

        if inspect.iscoroutinefunction(method):
            setattr(ChatStore, name, wrap(method))


def _client_cpu() -> None:
    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        async def slower(*args: Any, **kwargs: Any) -> Any:
            _busy()
            return await method(*args, **kwargs)

        return slower

    _patch_store_methods(wrap)


def _wrap_fetch(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    import asyncpg

    asyncpg.Connection.fetch = wrap(asyncpg.Connection.fetch)


def _is_history_read(sql: str) -> bool:
    flat = " ".join(sql.split()).lower()
    return flat.startswith(("select", "with")) and "from messages" in flat and "limit $" in flat


def _over_fetch() -> None:
    def wrap(fetch: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fetch)
        async def over(self: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
            found = _LIMIT.search(sql)
            if found is None or not _is_history_read(sql):
                return await fetch(self, sql, *args, **kwargs)
            index = int(found.group(1)) - 1
            limit = args[index]
            widened = list(args)
            widened[index] = limit * OVER_FETCH
            rows = await fetch(self, sql, *widened, **kwargs)
            return rows[:limit]  # trimmed in Python: the caller sees the same page

        return over

    _wrap_fetch(wrap)


def _round_trip() -> None:
    def wrap(fetch: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fetch)
        async def pinged(self: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
            await self.fetch("SELECT 1")  # a pre-ping: one more round trip per statement
            return await fetch(self, sql, *args, **kwargs)

        return pinged

    # The ping itself must not ping: wrap, then call the original for it.
    import asyncpg

    original = asyncpg.Connection.fetch
    wrapped = wrap(original)

    async def fetch(self: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
        if sql == "SELECT 1":
            return await original(self, sql, *args, **kwargs)
        return await wrapped(self, sql, *args, **kwargs)

    asyncpg.Connection.fetch = fetch


def _lock_held_longer() -> None:
    def wrap(fetch: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fetch)
        async def held(self: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
            flat = " ".join(sql.split()).lower()
            if "insert into messages" not in flat or self.is_in_transaction():
                return await fetch(self, sql, *args, **kwargs)
            # The append's row locks (the conversation's last_seq) now last
            # until a commit that waits for one more statement.
            async with self.transaction():
                rows = await fetch(self, sql, *args, **kwargs)
                await fetch(self, "SELECT pg_sleep(0.002)")
            return rows

        return held

    _wrap_fetch(wrap)


def _recompiled_per_call() -> None:
    counter = [0]

    def wrap(fetch: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fetch)
        async def fresh(self: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
            counter[0] += 1
            # A text never seen before: asyncpg's statement cache misses, so
            # every call parses, describes and plans anew.
            return await fetch(self, f"{sql} /* call {counter[0]} */", *args, **kwargs)

        return fresh

    _wrap_fetch(wrap)


def _pool_newest_first() -> None:
    from chat_storage.pool import FairQueue

    def pop_newest(self: Any) -> Any:
        self._deadlines.pop()
        return self._waiters.pop()

    FairQueue._pop_waiter = pop_newest  # type: ignore[method-assign]


REGRESSIONS: Final = {
    r.name: r
    for r in (
        Regression(
            "client-cpu",
            "client CPU",
            f"{BUSY_ITERATIONS} Python loop iterations in every ChatStore operation",
            "client instructions",
            patch=_client_cpu,
        ),
        Regression(
            "server-trigger",
            "server time",
            "a BEFORE INSERT trigger on messages sleeping 1 ms",
            "server work",
            sql="""
CREATE FUNCTION gate_slow_insert() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_sleep(0.001); RETURN NEW; END $$;
CREATE TRIGGER gate_slow_insert BEFORE INSERT ON messages
FOR EACH ROW EXECUTE FUNCTION gate_slow_insert();
""",
        ),
        Regression(
            "over-fetch",
            "rows fetched",
            f"history reads ask for {OVER_FETCH}x the rows and trim in Python",
            "server work",
            patch=_over_fetch,
        ),
        Regression(
            "index-dropped",
            "index dropped",
            "idx_messages_conversation_created (what history reads use at the seeded size) dropped",
            "server work",
            sql="DROP INDEX idx_messages_conversation_created",
        ),
        Regression(
            "round-trip",
            "round trips",
            "a SELECT 1 pre-ping before every statement",
            "server work",
            patch=_round_trip,
        ),
        Regression(
            "pool-newest-first",
            "pool order",
            "the pool hands a returned connection to the newest waiter",
            "tests/unit/test_pool.py (per-test timeout)",
            patch=_pool_newest_first,
        ),
        Regression(
            "lock-held-longer",
            "lock held longer",
            "an append runs in a transaction that commits after one more statement",
            "server work",
            patch=_lock_held_longer,
        ),
        Regression(
            "recompiled-per-call",
            "statement recompiled per call",
            "every statement's text is new, so it is parsed and planned on every call",
            "client instructions",
            patch=_recompiled_per_call,
        ),
    )
}


def named(name: str | None) -> Regression | None:
    """The regression called ``name`` (None or empty: none).

    Raises:
        KeyError: no regression has that name.
    """
    if not name:
        return None
    if name not in REGRESSIONS:
        raise KeyError(f"no regression {name!r}: one of {', '.join(REGRESSIONS)}")
    return REGRESSIONS[name]


def from_environment() -> Regression | None:
    """The regression named by :data:`ENV` in this process's environment."""
    return named(os.environ.get(ENV))


def apply(regression: Regression | None) -> None:
    """Apply ``regression``'s run-time patch in this process (SQL is the guard's job)."""
    if regression is not None and regression.patch is not None:
        regression.patch()


def pytest_configure(config: Any) -> None:
    """As a pytest plugin: apply the regression named by :data:`ENV`."""
    apply(from_environment())
