"""The chat workload as concurrent sessions, closed loop or paced.

A session owns one conversation. Each turn: read the latest 20 messages, append
the user's message, append the assistant's (each append bumps the
conversation), and every 10th turn list the user's 50 latest conversations.
Message texts are drawn before the clock starts, so generating them costs the
measured process nothing.
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from loadtests.core.backends import Backend
from loadtests.core.pacer import Pacer
from loadtests.core.workload import (
    ADD_MESSAGE,
    GET_HISTORY,
    HISTORY_LIMIT,
    LIST_CONVERSATIONS,
    LIST_LIMIT,
    assistant_text,
    user_text,
)

#: The operations a benchmark turn runs, in table order.
OPERATIONS = (GET_HISTORY, ADD_MESSAGE, LIST_CONVERSATIONS)
LIST_EVERY = 10
#: Operations per turn on average: a history read, two appends, a listing every LIST_EVERY turns.
OPS_PER_TURN = 3 + 1 / LIST_EVERY


@dataclass(frozen=True, slots=True)
class Target:
    """What one simulated session talks to: an owner and one of their conversations."""

    user_id: str
    conversation_id: uuid.UUID


async def load_targets(url: str, sessions: int) -> list[Target]:
    """One distinct conversation per session (reused round-robin if there are too few).

    Raises:
        RuntimeError: the database holds no conversation.
    """
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT user_id, id FROM conversations ORDER BY id LIMIT $1", sessions
        )
    finally:
        await conn.close()
    if not rows:
        raise RuntimeError("the seed made no conversations")
    return [Target(rows[i % len(rows)][0], rows[i % len(rows)][1]) for i in range(sessions)]


@dataclass
class Round:
    """What one backend did in one measured round."""

    ops: int = 0
    #: perf_counter() from which finished operations count (the lead-in ends).
    counts_from: float = 0.0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPERATIONS})


@dataclass(frozen=True)
class Texts:
    """Pre-drawn message texts."""

    user: tuple[str, ...]
    assistant: tuple[str, ...]

    @classmethod
    def draw(cls, n: int = 64, seed: int = 7) -> Texts:
        rng = random.Random(seed)
        return cls(
            tuple(user_text(rng) for _ in range(n)), tuple(assistant_text(rng) for _ in range(n))
        )


async def run_turn(
    backend: Backend, target: Target, turn: int, texts: Texts, record: Round | None
) -> None:
    """One turn; each operation that ends inside ``record``'s window is counted."""
    clock = time.perf_counter
    user, conv = target.user_id, target.conversation_id

    def done(op: str, started: float) -> None:
        ended = clock()
        if record is not None and ended >= record.counts_from:
            record.latencies[op].append(ended - started)
            record.ops += 1

    if turn % LIST_EVERY == 0:
        started = clock()
        await backend.list_conversations(user, LIST_LIMIT)
        done(LIST_CONVERSATIONS, started)
    started = clock()
    await backend.get_history(user, conv, HISTORY_LIMIT)
    done(GET_HISTORY, started)
    for role, pool in (("user", texts.user), ("assistant", texts.assistant)):
        started = clock()
        await backend.add_message(user, conv, role, pool[turn % len(pool)])
        done(ADD_MESSAGE, started)


async def run_closed(
    backend: Backend,
    targets: Sequence[Target],
    seconds: float,
    texts: Texts,
    *,
    lead_in: float = 0.0,
) -> Round:
    """Every session runs turns back to back for ``lead_in`` + ``seconds``; the
    operations that finish after the lead-in are counted, and the CPU time and
    duration from the lead-in's end until the last session finishes.

    The lead-in keeps a round's start-up out of its figures: sessions starting
    together, and (with ``pool_overflow_idle_timeout=0``) the pool reopening
    the overflow connections it closed when the previous round ended.
    """
    record = Round()
    rng = random.Random(len(targets))
    gc.collect()
    deadline = time.perf_counter() + lead_in + seconds
    marks: list[tuple[float, float]] = []  # (cpu, wall) when counting started

    def begin() -> None:
        # Counting and the CPU clock start at the same instant.
        record.counts_from = time.perf_counter()
        marks.append((time.process_time(), record.counts_from))

    async def session(target: Target) -> None:
        # Random start turn: the 10th-turn listings are spread, not synchronised.
        turn = rng.randrange(LIST_EVERY)
        while time.perf_counter() < deadline:
            await run_turn(backend, target, turn, texts, record)
            turn += 1

    if lead_in > 0:
        record.counts_from = math.inf
        asyncio.get_running_loop().call_later(lead_in, begin)
    else:
        begin()
    await asyncio.gather(*(session(t) for t in targets))
    # No mark: the round ended before its lead-in did (nothing was counted).
    cpu0, wall0 = marks[0] if marks else (time.process_time(), time.perf_counter())
    record.seconds = time.perf_counter() - wall0
    record.cpu_seconds = time.process_time() - cpu0
    return record


async def run_paced(
    backend: Backend,
    targets: Sequence[Target],
    seconds: float,
    texts: Texts,
    *,
    rate: float,
    warmup: float = 0.0,
) -> Round:
    """Each session starts a turn every ``1/rate`` s on its own schedule
    (core/pacer.py: clock-anchored, random phase, late turns run at once, none
    skipped); turns due in the first ``warmup`` s are not recorded.
    """
    record = Round()
    rng = random.Random(len(targets))
    gc.collect()
    start = time.perf_counter()
    measure_from = start + warmup
    deadline = measure_from + seconds
    cpu0: list[float] = []

    async def session(target: Target) -> None:
        pacer = Pacer(rate, rng, start=start)
        turn = rng.randrange(LIST_EVERY)
        while True:
            due = pacer.next_due()
            if due >= deadline:
                return
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            measured = due >= measure_from
            if measured and not cpu0:
                cpu0.append(time.process_time())
            await run_turn(backend, target, turn, texts, record if measured else None)
            turn += 1

    await asyncio.gather(*(session(t) for t in targets))
    record.seconds = max(time.perf_counter() - measure_from, 1e-9)
    record.cpu_seconds = time.process_time() - (cpu0[0] if cpu0 else time.process_time())
    return record
