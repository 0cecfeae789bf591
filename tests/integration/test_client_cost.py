"""Client CPU per operation, by deterministic proxies instead of a clock.

Two proxies, each measured over one call of every ChatStore operation after a
warm-up call (statement compiled, prepared on the connection, pool warm):

* SQLAlchemy compilations: a cached ``Statement`` is compiled once per process;
  a warmed-up call compiles nothing. Recompiling on every call costs hundreds
  of microseconds (more than the whole driver round trip on loopback).
* Python function calls made by ``chat_storage`` and ``sqlalchemy`` code during the
  call (``sys.setprofile``). asyncio's and asyncpg's internals are left out:
  how often the event loop spins depends on when bytes arrive, which is timing,
  not our code. The count is stable run to run and tracks client CPU closely
  (each Python call costs on the order of 0.1 us to 1 us); a change that adds
  work on the hot path (a transaction, result processing, an extra greenlet,
  a per-call compile) adds tens to hundreds of calls.

The committed budget is tests/gate/client_cost_budget.json. The call count is
a one-sided, generous alarm: only a count above ``budget * (1 + tolerance)``
(tolerance 0.5: 1.5x the recorded count) fails. A regression that matters
(a transaction, an extra greenlet, result processing, a per-call compile)
adds tens to hundreds of calls and still trips it; a few calls more or fewer
are a refactor's shape, not its cost. Fewer calls always pass, so a change
that makes the code shorter never fails the build. The cost itself is guarded
where it is measured: zero compilations here (exact), round trips and
statements per operation (test_round_trips.py, exact), and instructions per
operation under cachegrind in CI (``python -m loadtests bench instrumentation
--instructions``). Re-record after a deliberate change with
``CHAT_STORAGE_WRITE_CLIENT_COST=1 pytest <this file>``.
"""

from __future__ import annotations

import gc
import json
import math
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import opentelemetry.trace
import prometheus_client
import pytest
import sqlalchemy
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import CollectorRegistry
from sqlalchemy.sql import compiler

import chat_storage
from chat_storage import ChatStore, StoreMetrics, create_engine, instrument_statements
from tests.conftest import MakeUser
from tests.store_operations import Operation, every_operation

BUDGET_PATH = Path(__file__).resolve().parents[1] / "gate" / "client_cost_budget.json"
_WATCHED = (
    str(Path(chat_storage.__file__).resolve().parent),
    str(Path(sqlalchemy.__file__).resolve().parent),
)
#: Where the instrumentation's own work happens (the SDK included).
_INSTRUMENTATION = (
    str(Path(opentelemetry.trace.__file__).resolve().parents[1]),
    str(Path(prometheus_client.__file__).resolve().parent),
)


def load_budget(key: str = "operations") -> tuple[float, dict[str, dict[str, int]]]:
    """(tolerance, operation -> {"calls": n, "compilations": n}) from the budget file."""
    data = json.loads(BUDGET_PATH.read_text())
    return float(data["tolerance"]), data[key]


def check_budget(key: str, measured: dict[str, dict[str, int]]) -> list[str]:
    """Violations of the ``key`` budget (rewritten first with CHAT_STORAGE_WRITE_CLIENT_COST=1)."""
    tolerance, budget = load_budget(key)
    if os.environ.get("CHAT_STORAGE_WRITE_CLIENT_COST") == "1":
        data = json.loads(BUDGET_PATH.read_text())
        data[key] = measured
        BUDGET_PATH.write_text(json.dumps(data, indent=2) + "\n")
        budget = measured
    assert set(measured) == set(budget)
    return violations(measured, budget, tolerance)


@contextmanager
def count_compilations() -> Iterator[list[int]]:
    """Counts every SQL compilation (any dialect, any statement) while open."""
    counter = [0]
    original = compiler.Compiled.__init__

    def counting(self: compiler.Compiled, *args: Any, **kwargs: Any) -> None:
        counter[0] += 1
        original(self, *args, **kwargs)

    compiler.Compiled.__init__ = counting  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        compiler.Compiled.__init__ = original  # type: ignore[method-assign]


@contextmanager
def count_calls(watched: tuple[str, ...] = _WATCHED) -> Iterator[list[int]]:
    """Counts Python function calls into ``watched`` (chat_storage/ and sqlalchemy/) while open.

    Greenlets share the thread's profile function, so the statement's greenlet
    (checkout, fetch, checkin) is counted as well as the coroutine.
    """
    counter = [0]
    cache: dict[str, bool] = {}
    watched_dirs = watched

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event != "call":
            return
        filename = frame.f_code.co_filename
        watched = cache.get(filename)
        if watched is None:
            watched = cache[filename] = filename.startswith(watched_dirs)
        if watched:
            counter[0] += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield counter
    finally:
        sys.setprofile(previous)


async def measure(operation: Operation, watched: tuple[str, ...] = _WATCHED) -> dict[str, int]:
    """Compilations and calls of one call of ``operation``, after a warm-up call."""
    await operation()
    # A cyclic collection during the call would run weakref callbacks of unrelated
    # objects (ORM instance state cleanup) inside the measurement.
    gc.collect()
    gc.disable()
    try:
        with count_compilations() as compilations, count_calls(watched) as calls:
            await operation()
    finally:
        gc.enable()
    return {"calls": calls[0], "compilations": compilations[0]}


@pytest.fixture
async def cost_store(database_url: str) -> AsyncIterator[ChatStore]:
    """A ChatStore with one pooled connection, so every call takes the same path."""
    engine = create_engine(database_url=database_url, pool_size=1, max_overflow=0)
    store = ChatStore(engine)
    # A store without an SDK looks for one at most once a second; that lookup
    # (calls into opentelemetry/) landing in a measured call made the counts
    # differ by one from run to run. No SDK appears in this module.
    store._sdk_checked_until = math.inf
    try:
        yield store
    finally:
        await engine.dispose()


def violations(
    measured: dict[str, dict[str, int]], budget: dict[str, dict[str, int]], tolerance: float
) -> list[str]:
    """One line per operation that compiles SQL or exceeds its call alarm."""
    problems = []
    for name, cost in measured.items():
        allowed = budget[name]
        if cost["compilations"] > allowed["compilations"]:
            problems.append(
                f"{name}: {cost['compilations']} SQL compilations per call "
                f"(budget {allowed['compilations']}): a statement is recompiled on every call"
            )
        # One-sided on purpose (see the module docstring): fewer calls never fail.
        high = allowed["calls"] * (1 + tolerance)
        if cost["calls"] > high:
            problems.append(
                f"{name}: {cost['calls']} Python calls per call, budget {allowed['calls']} "
                f"+{tolerance:.0%}: the hot path got more expensive"
            )
    return problems


def test_fewer_calls_than_the_budget_pass() -> None:
    """An operation made cheaper (a refactor that removed calls) never fails the alarm."""
    tolerance, budget = load_budget()
    cheaper = {
        name: {"calls": cost["calls"] // 2, "compilations": 0} for name, cost in budget.items()
    }
    assert not violations(cheaper, budget, tolerance)


def test_a_few_more_calls_pass_and_half_again_fails() -> None:
    """Ten calls more than the budget pass; more than 1.5x the budget fails."""
    tolerance, budget = load_budget()
    recorded = budget["add_message"]["calls"]
    allowed = {"add_message": budget["add_message"]}
    assert not violations(
        {"add_message": {"calls": recorded + 10, "compilations": 0}}, allowed, tolerance
    )
    slower = {"add_message": {"calls": int(recorded * 1.5) + 1, "compilations": 0}}
    assert violations(slower, allowed, tolerance)


async def test_client_cost_per_operation_within_budget(
    cost_store: ChatStore, make_user: MakeUser
) -> None:
    """Each warmed-up operation compiles nothing and makes its budgeted Python calls."""
    ops = await every_operation(cost_store, await make_user())
    measured = {name: await measure(op) for name, op in ops.items()}
    print("\nclient cost per operation:", measured)
    assert not check_budget("operations", measured)


async def test_recompiling_statement_is_caught(
    cost_store: ChatStore, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Statement that forgets its compiled SQL fails the budget (the guard can fail)."""
    from chat_storage.queries.base import Statement

    original = Statement.compile

    def uncached(self: Statement) -> tuple[str, tuple[str, ...]]:
        self._sql = None
        return original(self)

    ops = await every_operation(cost_store, await make_user())
    monkeypatch.setattr(Statement, "compile", uncached)
    measured = {"get_history": await measure(ops["get_history"])}
    tolerance, budget = load_budget()
    problems = violations(measured, budget, tolerance)
    assert any("recompiled" in p for p in problems), problems
    assert any("more expensive" in p for p in problems), problems


@pytest.fixture
async def instrumented_store(database_url: str) -> AsyncIterator[ChatStore]:
    """As ``cost_store``, instrumented as in production: StoreMetrics, an SDK with a
    parent-based ratio sampler (ratio 0: the unsampled path, which 99% of calls
    take at 1%, deterministically), and statement spans on the engine."""
    engine = create_engine(database_url=database_url, pool_size=1, max_overflow=0)
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0)))
    statements = instrument_statements(engine, tracer_provider=provider)
    try:
        yield ChatStore(engine, metrics=StoreMetrics(CollectorRegistry()), tracer_provider=provider)
    finally:
        statements.remove()
        provider.shutdown()
        await engine.dispose()


def under_unsampled_caller(op: Operation) -> Operation:
    """``op`` run inside a remote caller's unsampled trace (a request's traceparent)."""
    caller = NonRecordingSpan(
        SpanContext(trace_id=1, span_id=1, is_remote=True, trace_flags=TraceFlags(0))
    )

    async def call() -> object:
        with opentelemetry.trace.use_span(caller):
            return await op()

    return call


async def instrumentation_cost(
    plain: ChatStore, instrumented: ChatStore, user: str, *, in_request: bool = False
) -> dict[str, dict[str, int]]:
    """Python calls the instrumentation adds per warmed-up call of each operation
    (into chat_storage/, sqlalchemy/, opentelemetry/ and prometheus_client/), as a root
    operation or (``in_request``) under a caller's unsampled span."""
    watched = _WATCHED + _INSTRUMENTATION
    plain_ops = await every_operation(plain, user)
    instrumented_ops = await every_operation(instrumented, user)
    added = {}
    for name, op in instrumented_ops.items():
        reference = plain_ops[name]
        if in_request:
            op, reference = under_unsampled_caller(op), under_unsampled_caller(reference)
        on = await measure(op, watched)
        off = await measure(reference, watched)
        added[name] = {
            "calls": on["calls"] - off["calls"],
            "compilations": on["compilations"],
        }
    return added


async def test_instrumentation_cost_per_operation_within_budget(
    cost_store: ChatStore, instrumented_store: ChatStore, make_user: MakeUser
) -> None:
    """Metrics and tracing add their budgeted Python calls to each operation, no more.

    The clock-free side of the instrumentation benchmark (loadtests/bench
    instrumentation): each added Python call costs about 0.1 us.
    """
    measured = await instrumentation_cost(cost_store, instrumented_store, await make_user())
    print("\ncalls added by instrumentation per root operation:", measured)
    assert not check_budget("instrumentation_added", measured)


async def test_instrumentation_cost_under_an_unsampled_caller_within_budget(
    cost_store: ChatStore, instrumented_store: ChatStore, make_user: MakeUser
) -> None:
    """Under a request's unsampled span (99% of requests at 1%) no span is asked
    of the SDK: metrics and the sampled-flag check only."""
    measured = await instrumentation_cost(
        cost_store, instrumented_store, await make_user(), in_request=True
    )
    print("\ncalls added by instrumentation under an unsampled caller:", measured)
    assert not check_budget("instrumentation_added_in_unsampled_request", measured)


async def test_statement_pool_listeners_are_caught(
    cost_store: ChatStore, instrumented_store: ChatStore, make_user: MakeUser
) -> None:
    """Re-attaching the instrumentation's pool listeners fails the budget (the guard can fail)."""
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import NoOpUpDownCounter

    engine = instrumented_store.engine.sync_engine
    full = EngineTracer(  # type: ignore[no-untyped-call]
        opentelemetry.trace.NoOpTracer(), engine, NoOpUpDownCounter("usage")
    )
    try:
        measured = await instrumentation_cost(cost_store, instrumented_store, await make_user())
    finally:
        full.remove_all_event_listeners()
    tolerance, budget = load_budget("instrumentation_added")
    problems = violations(measured, budget, tolerance)
    assert any("more expensive" in p for p in problems), problems
