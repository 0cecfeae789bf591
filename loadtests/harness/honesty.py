"""How much does the Locust harness add to the latencies it reports?

``python -m loadtests honesty`` seeds one database, then runs the same paced
workload twice, alternating for ``--rounds``: through Locust (gevent greenlets
handing each call to the asyncio loop thread, ``python -m loadtests run``'s
path) and through a pure-asyncio driver in this process (one task per user,
the same ``client.ChatClient`` script, the same pacer, the same backend, each
call timed around the same ``await``). The difference of the p95s is what the
harness adds; the target is under 2 ms.
"""

from __future__ import annotations

import asyncio
import random
import time

from loadtests.core.backends import StoreBackend
from loadtests.core.pacer import Pacer
from loadtests.core.workload import STORE, seeded_user_id
from loadtests.harness.client import ChatClient, Outcome, Pause, Script, parse_weights
from loadtests.harness.report import Sample


async def _drive(client: ChatClient, script: Script, samples: list[Sample]) -> None:
    outcome: Outcome | None = None
    while True:
        try:
            step = script.send(outcome)
        except StopIteration:
            return
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
            outcome = None
            continue
        started = time.perf_counter()
        try:
            value = await step.call()
        except Exception as exc:
            ms = (time.perf_counter() - started) * 1000.0
            samples.append(Sample(time.time(), STORE, step.name, ms, True))
            outcome = (None, exc)
            continue
        ms = (time.perf_counter() - started) * 1000.0
        samples.append(Sample(time.time(), STORE, step.name, ms, False))
        outcome = (value, None)


async def run_pure(
    url: str,
    run_id: str,
    seeded_users: int,
    *,
    users: int,
    rate: float,
    weights: str,
    warmup: float,
    duration: float,
    pool_size: int,
    max_overflow: int,
) -> list[Sample]:
    """Paced users on one event loop; the samples of the measured window only."""
    backend = StoreBackend(url, pool_size=pool_size, max_overflow=max_overflow)
    await backend.open()
    samples: list[Sample] = []
    parsed = parse_weights(weights)
    stop_at = time.monotonic() + warmup + duration

    async def user(index: int) -> None:
        rng = random.Random(index)
        pacer = Pacer(rate, rng)
        client = ChatClient(
            backend, seeded_user_id(run_id, index % seeded_users), rng, weights=parsed
        )
        await asyncio.sleep(pacer.wait())  # as the Locust users' on_start
        await _drive(client, client.start(), samples)
        while time.monotonic() < stop_at:
            await _drive(client, client.next_task(), samples)
            await asyncio.sleep(pacer.wait())

    try:
        started = time.time()
        await asyncio.gather(*(user(i) for i in range(users)))
    finally:
        await backend.close()
    return [s for s in samples if s.t >= started + warmup]
