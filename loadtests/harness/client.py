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
import uuid
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Final

from loadtests.core.backends import Backend
from loadtests.core.workload import (
    ADD_MESSAGE,
    ARCHIVE_CONVERSATION,
    CREATE_CONVERSATION,
    GET_HISTORY,
    HISTORY_LIMIT,
    LIST_CONVERSATIONS,
    LIST_LIMIT,
    assistant_text,
    user_text,
)

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


class ChatClient:
    """One seeded user's behaviour, on either path (core.backends)."""

    def __init__(
        self,
        backend: Backend,
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
        outcome = yield Op(
            LIST_CONVERSATIONS, lambda: self.backend.list_conversations(self.user_id, LIST_LIMIT)
        )
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
        outcome = yield Op(
            GET_HISTORY, lambda: self.backend.get_history(user, conversation, HISTORY_LIMIT)
        )
        if outcome is None or outcome[1] is not None:
            return
        text = user_text(self.rng)
        outcome = yield Op(
            ADD_MESSAGE, lambda: self.backend.add_message(user, conversation, "user", text)
        )
        if outcome is None or outcome[1] is not None:
            return
        if self.reply_delay > 0:
            yield Pause(self.reply_delay)
        reply = assistant_text(self.rng)
        yield Op(
            ADD_MESSAGE, lambda: self.backend.add_message(user, conversation, "assistant", reply)
        )

    def switch(self) -> Script:
        """List the latest 50 active conversations and continue one of them."""
        outcome = yield Op(
            LIST_CONVERSATIONS, lambda: self.backend.list_conversations(self.user_id, LIST_LIMIT)
        )
        page, exc = outcome or (None, None)
        if exc is None and page:
            self.conversation = self.rng.choice(page)

    def new(self) -> Script:
        """Start a new conversation."""
        outcome = yield Op(
            CREATE_CONVERSATION, lambda: self.backend.create_conversation(self.user_id)
        )
        value, exc = outcome or (None, None)
        self.conversation = value if exc is None else None

    def archive(self) -> Script:
        """Archive the current conversation and start a new one."""
        conversation = self.conversation
        if conversation is not None:
            outcome = yield Op(
                ARCHIVE_CONVERSATION,
                lambda: self.backend.archive_conversation(self.user_id, conversation),
            )
            if outcome is None or outcome[1] is not None:
                return
        yield from self.new()
