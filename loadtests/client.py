"""What one simulated chat client does, independent of what drives it.

The behaviour is written once, as generators that yield the operations to run;
a driver runs each yielded operation and sends back ``(value, exception)``.
Two drivers use it: the Locust users (locustfile.py, one greenlet per user,
operations run on the asyncio loop through the bridge) and the pure-asyncio
driver of ``python -m loadtests honesty`` (one task per user), so comparing
the two measures the harness and nothing else.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Final

from loadtests.workload import assistant_text, user_text

TASKS: Final = ("turn", "switch", "new", "archive")


@dataclass(frozen=True)
class Op:
    """One timed database operation: its report name and the coroutine to await."""

    name: str
    call: Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class Pause:
    """Wait this long without a database call (e.g. the assistant composing)."""

    seconds: float


Outcome = tuple[Any, Exception | None]
Script = Generator[Op | Pause, Outcome | None, None]


def parse_weights(text: str) -> list[int]:
    """``"20,3,2,1"`` -> weights of turn, switch, new, archive."""
    weights = [int(w) for w in text.split(",")]
    if len(weights) != len(TASKS) or min(weights) < 0 or sum(weights) == 0:
        raise ValueError("weights: four non-negative integers, turn,switch,new,archive")
    return weights


class Pacer:
    """``--rate`` tasks per second per user on a fixed schedule with a random phase.

    Locust's ``constant_throughput`` anchors each user's schedule to the end of
    its first task, so any hiccup that completes many users' first tasks
    together (process start-up, a slow first connection) keeps them in lockstep
    for the whole run: measured, every user's turn inside one 200 ms window per
    second, and p50 ~100 ms that was the burst, not the load. Here the schedule
    is anchored to the clock at a random phase; a task that overruns its slot
    starts the next one at once (no catch-up burst).
    """

    def __init__(self, rate: float, rng: random.Random) -> None:
        self._period = 1.0 / rate
        self._rng = rng
        self._next: float | None = None

    def wait(self) -> float:
        """Seconds to wait before the next task."""
        now = time.monotonic()
        if self._next is None:
            self._next = now + self._rng.uniform(0.0, self._period)
        else:
            self._next = max(self._next + self._period, now)
        return self._next - now


class ChatClient:
    """One seeded user's behaviour; ``backend`` is a workload.StoreBackend or RawBackend."""

    def __init__(
        self,
        backend: Any,
        user_id: str,
        rng: random.Random,
        *,
        weights: list[int],
        reply_delay: float = 0.0,
    ) -> None:
        self.backend = backend
        self.user_id = user_id
        self.rng = rng
        self.reply_delay = reply_delay
        self.conversation: uuid.UUID | None = None
        tasks = (self.turn, self.switch, self.new, self.archive)
        self._tasks = [t for t, w in zip(tasks, weights, strict=True) for _ in range(w)]

    def start(self) -> Script:
        """Open the most recently updated conversation, or create one."""
        outcome = yield Op("conversation_list", lambda: self.backend.list(self.user_id, 50))
        page, exc = outcome or (None, None)
        if exc is None and page:
            self.conversation = page[0]
        else:
            yield from self.new()

    def next_task(self) -> Script:
        """One task, picked by weight."""
        yield from self.rng.choice(self._tasks)()

    def turn(self) -> Script:
        """Read the history, append the user's message and the assistant's reply."""
        if self.conversation is None:
            yield from self.new()
            if self.conversation is None:
                return
        conversation, user = self.conversation, self.user_id
        outcome = yield Op("history_read", lambda: self.backend.history(user, conversation, 20))
        if outcome is None or outcome[1] is not None:
            return
        text = user_text(self.rng)
        outcome = yield Op(
            "message_insert", lambda: self.backend.append(user, conversation, "user", text)
        )
        if outcome is None or outcome[1] is not None:
            return
        if self.reply_delay > 0:
            yield Pause(self.reply_delay)
        reply = assistant_text(self.rng)
        yield Op(
            "message_insert", lambda: self.backend.append(user, conversation, "assistant", reply)
        )

    def switch(self) -> Script:
        """List the latest 50 active conversations and continue one of them."""
        outcome = yield Op("conversation_list", lambda: self.backend.list(self.user_id, 50))
        page, exc = outcome or (None, None)
        if exc is None and page:
            self.conversation = self.rng.choice(page)

    def new(self) -> Script:
        """Start a new conversation."""
        outcome = yield Op("conversation_create", lambda: self.backend.create(self.user_id))
        value, exc = outcome or (None, None)
        self.conversation = value if exc is None else None

    def archive(self) -> Script:
        """Archive the current conversation and start a new one."""
        conversation = self.conversation
        if conversation is not None:
            outcome = yield Op(
                "conversation_archive", lambda: self.backend.archive(self.user_id, conversation)
            )
            if outcome is None or outcome[1] is not None:
                return
        yield from self.new()
