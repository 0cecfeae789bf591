"""Both variants at the same time, each in its own process (duet benchmarking).

Alternating rounds (interleave.py) compare variants that ran at different
moments. On a shared two-core machine the server's state and the neighbours
change from one round to the next: a variant's own CPU per operation moves
about ±5% between rounds, as much as the effect a 5% target is about. A duet
runs both variants at once, each in its own process with its own sessions,
against the same server, so whatever the machine does during a round it does
to both (Bulej et al., "Duet Benchmarking: Improving Measurement Accuracy in
the Cloud", 2020). In a closed loop both then also run at nearly the same rate
(they share the server), so the slower one no longer pays more per operation
merely for batching fewer responses per event-loop wake-up.

Each process gets half of the sessions' conversations; the halves are swapped
between the variants every other round, so neither always serves the same
users. Rounds start at the same ``time.perf_counter()`` instant in both
processes (CLOCK_MONOTONIC on Linux: one clock for the whole machine).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from loadtests.bench.sessions import Round, Target, Texts, run_closed, run_paced
from loadtests.bench.stats import Summary
from loadtests.core.backends import Backend

#: Seconds between sending a round's start time and the start.
START_MARGIN = 0.3
#: Seconds a process may take beyond a round's length before the duet gives up.
SLACK = 120.0


@dataclass
class DuetVariant:
    """A variant to run in a process of its own: ``factory`` builds its backend
    there (a module-level function or a ``functools.partial`` of one: it is
    pickled to the process). The backend may have ``final_figures()``: the
    numbers it returns after each duet are added up in :attr:`figures`."""

    name: str
    factory: Callable[[], Backend]
    figures: dict[str, float] = field(default_factory=dict, compare=False)

    # The Backend protocol, so comparison code can hold a DuetVariant where it
    # holds a backend; the work happens in the variant's process.
    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def get_history(self, user_id: str, conversation_id: Any, limit: int) -> int:
        raise NotImplementedError("a duet variant runs in its own process")

    async def add_message(self, user_id: str, conversation_id: Any, role: str, text: str) -> None:
        raise NotImplementedError("a duet variant runs in its own process")

    async def create_conversation(self, user_id: str) -> Any:
        raise NotImplementedError("a duet variant runs in its own process")

    async def list_conversations(self, user_id: str, limit: int) -> list[Any]:
        raise NotImplementedError("a duet variant runs in its own process")

    async def archive_conversation(self, user_id: str, conversation_id: Any) -> None:
        raise NotImplementedError("a duet variant runs in its own process")


@dataclass(frozen=True)
class RoundOrder:
    """One round as sent to a variant's process."""

    halves_index: int
    start_at: float
    seconds: float
    lead_in: float
    pace: float | None


def _child(*args: Any) -> None:
    """A variant's process: :func:`_serve` on an event loop of its own."""
    asyncio.run(_serve(*args))


async def _serve(
    conn: Connection,
    factory: Callable[[], Backend],
    halves: list[list[Target]],
    texts: Texts,
    warmup: float,
) -> None:
    backend = factory()
    await backend.open()
    try:
        for targets in halves:
            if warmup > 0:
                await run_closed(backend, targets, warmup / len(halves), texts)
        conn.send("ready")
        while True:
            order: RoundOrder | None = await asyncio.to_thread(conn.recv)
            if order is None:
                break
            targets = halves[order.halves_index]
            delay = order.start_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            rnd: Round
            if order.pace is None:
                rnd = await run_closed(
                    backend, targets, order.seconds, texts, lead_in=order.lead_in
                )
            else:
                rnd = await run_paced(
                    backend, targets, order.seconds, texts, rate=order.pace, warmup=order.lead_in
                )
            conn.send(rnd)
    finally:
        await backend.close()
    final = getattr(backend, "final_figures", None)
    conn.send(final() if callable(final) else {})


def _receive(conn: Connection, process: Any, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError(f"duet process {process.name} sent nothing in {timeout:.0f} s")
    return conn.recv()


def run_duet(
    variants: Sequence[DuetVariant],
    targets: Sequence[Target],
    *,
    rounds: int,
    seconds: float,
    warmup: float,
    texts: Texts,
    lead_in: float,
    pace: float | None,
) -> dict[str, Summary]:
    """Run ``variants`` (two) at the same time for ``rounds`` rounds, each on
    half of ``targets`` (swapped every other round); their summaries."""
    if len(variants) != 2:
        raise ValueError("a duet is two variants")
    if len(targets) < 2:
        raise ValueError("a duet needs two targets or more (one half per variant)")
    half = len(targets) // 2
    halves = [list(targets[:half]), list(targets[half : 2 * half])]
    context = multiprocessing.get_context("spawn")
    pipes: list[tuple[Connection, Any]] = []
    try:
        for variant in variants:
            parent, child = context.Pipe()
            process = context.Process(
                target=_child,
                args=(child, variant.factory, halves, texts, warmup),
                name=f"duet-{variant.name}",
                daemon=True,
            )
            process.start()
            child.close()
            pipes.append((parent, process))
        for conn, process in pipes:
            if _receive(conn, process, SLACK + warmup) != "ready":
                raise RuntimeError(f"duet process {process.name} did not start")
        summaries = {variant.name: Summary() for variant in variants}
        for r in range(rounds):
            start_at = time.perf_counter() + START_MARGIN
            for i, (conn, _) in enumerate(pipes):
                conn.send(RoundOrder((i + r) % 2, start_at, seconds, lead_in, pace))
            for variant, (conn, process) in zip(variants, pipes, strict=True):
                rnd = _receive(conn, process, START_MARGIN + lead_in + seconds + SLACK)
                summaries[variant.name].add(rnd)
        for conn, _ in pipes:
            conn.send(None)
        for variant, (conn, process) in zip(variants, pipes, strict=True):
            final: dict[str, float] = _receive(conn, process, SLACK)
            for key, value in final.items():
                variant.figures[key] = variant.figures.get(key, 0.0) + value
            process.join(SLACK)
        return summaries
    finally:
        for conn, process in pipes:
            if process.is_alive():
                process.terminate()
                process.join(5)
            conn.close()
