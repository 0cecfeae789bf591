"""Alternate short rounds of several backends, so drift on a shared machine
(other processes, autovacuum, checkpoints, growing tables) hits them all alike."""

from __future__ import annotations

from collections.abc import Sequence

from loadtests.bench.sessions import Target, Texts, run_closed, run_paced
from loadtests.bench.stats import Summary
from loadtests.core.backends import Backend


async def interleave(
    backends: Sequence[Backend],
    targets: Sequence[Target],
    *,
    rounds: int,
    seconds: float,
    warmup: float,
    texts: Texts,
    lead_in: float = 0.0,
    pace: float | None = None,
) -> dict[str, Summary]:
    """Rounds: a warm-up per backend, then ``rounds`` rounds of each, the order
    reversed every other round (neither always runs right after the other),
    each round counted after its ``lead_in``.

    Closed loop by default (see run_closed). With ``pace`` each session starts
    ``pace`` turns per second instead (see run_paced): both variants then serve
    the same offered load, so CPU per operation compares like for like (in a
    closed loop a slower variant also batches fewer responses per event-loop
    turn, which raises its CPU per operation further).
    """
    for backend in backends:
        if warmup > 0:
            await run_closed(backend, targets, warmup, texts)
    summaries = {backend.name: Summary() for backend in backends}
    for r in range(rounds):
        order = backends if r % 2 == 0 else list(reversed(backends))
        for backend in order:
            if pace is None:
                rnd = await run_closed(backend, targets, seconds, texts, lead_in=lead_in)
            else:
                rnd = await run_paced(backend, targets, seconds, texts, rate=pace, warmup=lead_in)
            summaries[backend.name].add(rnd)
    return summaries
