"""The harness's shared core: one vocabulary, one pacer, no import cycles (no database)."""

from __future__ import annotations

import ast
import random
import uuid
from pathlib import Path

import pytest

from chat_storage.models import ConversationStatus
from chat_storage.queries.conversations import (
    plan_create_conversation,
    plan_list_conversations,
    plan_set_status,
)
from chat_storage.queries.messages import plan_add_message, plan_get_history
from loadtests.core.pacer import Pacer
from loadtests.core.workload import OPERATIONS

LOADTESTS = Path(__file__).resolve().parents[2] / "loadtests"


def test_operation_names_are_the_statement_names() -> None:
    """Reports, benchmarks and gate name each operation as its statement (and so
    its metric label and span) does."""
    user, conversation = "u", uuid.uuid4()
    plans = [
        plan_get_history(user_id=user, conversation_id=conversation),
        plan_add_message(user_id=user, conversation_id=conversation, role="user", content="x"),
        plan_create_conversation(user_id=user),
        plan_list_conversations(user_id=user),
        plan_set_status(
            user_id=user, conversation_id=conversation, status=ConversationStatus.ARCHIVED
        ),
    ]
    assert OPERATIONS == tuple(plan.statement.name for plan in plans)


def test_pacer_keeps_a_random_phase_schedule() -> None:
    """Due times are start + phase + k / rate, the phase within one period."""
    pacer = Pacer(4.0, random.Random(1), start=100.0)
    dues = [pacer.next_due() for _ in range(4)]
    phase = dues[0] - 100.0
    assert 0 <= phase < 0.25
    assert dues == pytest.approx([100.0 + phase + k * 0.25 for k in range(4)])


def test_pacer_runs_late_tasks_at_once_and_keeps_the_schedule() -> None:
    """Behind schedule, every late task is due now (none skipped, no re-anchoring)."""
    pacer = Pacer(100.0, random.Random(2), start=0.0)  # long past on the perf_counter clock
    assert [pacer.wait() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert pacer.next_due() < 0.04  # the fourth slot of the original schedule


def test_pacer_refuses_a_rate_of_zero() -> None:
    """A rate must be positive."""
    with pytest.raises(ValueError, match="positive"):
        Pacer(0.0, random.Random(3))


def _imports(path: Path) -> set[str]:
    """The loadtests modules ``path`` imports (at any level of the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("loadtests"):
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("loadtests"))
    return found


def test_loadtests_has_no_import_cycle() -> None:
    """No loadtests module reaches itself through its imports, deferred ones included."""
    modules = {}
    for path in LOADTESTS.rglob("*.py"):
        parts = path.relative_to(LOADTESTS.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {name: _imports(path) & set(modules) for name, path in modules.items()}
    # A package's __init__ importing its own submodules is how a package is built,
    # not a cycle: only edges between distinct modules that are not parent->child count.
    for name in graph:
        graph[name] = {m for m in graph[name] if m != name and not m.startswith(name + ".")}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for c in (cycle_from(name) for name in sorted(graph)) if c]
    assert not cycles, cycles[0]
