"""The one pacer: ``rate`` tasks per second on a clock-anchored schedule with a random phase.

Used by the Locust users, the pure-asyncio driver of ``honesty`` and the
benchmarks' paced sessions, so "paced" means the same load everywhere.

Anchored to the clock, not to the end of a task: Locust's
``constant_throughput`` anchors each user's schedule to the end of its first
task, and a start-up hiccup that finished many first tasks together kept all
users in lockstep for the whole run (every user's turn inside one 200 ms window
per second: a burst every second measured as the load). Each schedule starts
at its own random phase instead.

Catch-up rule: the schedule is kept. A task that overruns its slot is
followed at once by the late ones, none skipped, so the offered load stays
what was asked and an overloaded system shows as latency and backlog, never as
a quietly lighter load (the benchmarks' "served" share relies on it).
"""

from __future__ import annotations

import random
import time


class Pacer:
    """Due times ``start + phase + k / rate`` for k = 0, 1, 2, ...

    ``phase`` is drawn from ``rng`` in ``[0, 1/rate)``; ``start`` defaults to
    the clock (``time.perf_counter``) when the pacer is made.
    """

    def __init__(self, rate: float, rng: random.Random, *, start: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.period = 1.0 / rate
        self._next = (time.perf_counter() if start is None else start) + rng.uniform(
            0.0, self.period
        )

    def next_due(self) -> float:
        """The next task's due time (``time.perf_counter`` clock), and advance."""
        due = self._next
        self._next = due + self.period
        return due

    def wait(self) -> float:
        """Seconds to wait before the next task (0 when it is already late)."""
        return max(0.0, self.next_due() - time.perf_counter())
