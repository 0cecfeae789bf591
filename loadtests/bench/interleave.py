"""Alternate short rounds of several backends, so drift on a shared machine
(other processes, autovacuum, checkpoints, growing tables) hits them all alike."""

from __future__ import annotations

from collections.abc import Sequence

from loadtests.bench.backends import Backend
from loadtests.bench.database import Target
from loadtests.bench.sessions import Texts, run_closed
from loadtests.bench.stats import Summary


async def interleave(
    backends: Sequence[Backend],
    targets: Sequence[Target],
    *,
    rounds: int,
    seconds: float,
    warmup: float,
    texts: Texts,
) -> dict[str, Summary]:
    """Closed-loop rounds: a warm-up per backend, then ``rounds`` rounds of each,
    the order reversed every other round (neither always runs right after the other)."""
    for backend in backends:
        if warmup > 0:
            await run_closed(backend, targets, warmup, texts)
    summaries = {backend.name: Summary() for backend in backends}
    for r in range(rounds):
        order = backends if r % 2 == 0 else list(reversed(backends))
        for backend in order:
            summaries[backend.name].add(await run_closed(backend, targets, seconds, texts))
    return summaries
