"""``instrumentation --instructions``: the parts that need no Valgrind.

The whole command (cachegrind around both variants) runs in ``.ci/run``, where
Valgrind is installed; here: that the operation count the per-operation figure
divides by is the workload's, that a counted child runs exactly those
operations, and how cachegrind's output and the verdict are read.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest

from devdb import ServerInfo
from loadtests.bench.instructions import Counts, PerOperation, operations, verdict
from loadtests.bench.instrumentation import Options, counted_child_command
from loadtests.bench.sessions import Target, Texts, load_targets, run_turn
from loadtests.core.database import scratch_database_migrated
from loadtests.core.seed import seed_messages

CACHEGRIND_OUT = """\
desc: I1 cache:         32768 B, 64 B, 8-way associative
desc: D1 cache:         32768 B, 64 B, 8-way associative
desc: LL cache:         8388608 B, 64 B, 16-way associative
cmd: python -c counted_child
events: Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw
fl=???
fn=0x0
0 1 0 0 0 0 0 0 0 0
summary: 1000000 2000 30 400000 5000 40 300000 1000 10
"""


class CountingBackend:
    """Counts the calls the workload makes (no database: this checks the
    workload's shape, which the figure divides by)."""

    def __init__(self) -> None:
        self.calls = 0

    async def get_history(self, user_id: str, conversation_id: uuid.UUID, limit: int) -> int:
        self.calls += 1
        return 0

    async def add_message(
        self, user_id: str, conversation_id: uuid.UUID, role: str, text: str
    ) -> None:
        self.calls += 1

    async def list_conversations(self, user_id: str, limit: int) -> list[uuid.UUID]:
        self.calls += 1
        return []


async def test_operations_is_what_the_turns_run() -> None:
    target = Target("u", uuid.uuid4())
    texts = Texts.draw(4)
    for turns in range(0, 32):
        backend = CountingBackend()
        for turn in range(turns):
            await run_turn(backend, target, turn, texts, None)  # type: ignore[arg-type]
        assert backend.calls == operations(turns), turns


def test_counts_read_cachegrind_summary(tmp_path: Path) -> None:
    path = tmp_path / "cachegrind.out"
    path.write_text(CACHEGRIND_OUT)
    counts = Counts.read(path)
    assert counts.instructions == 1_000_000
    # Ir + 10 x (I1mr + D1mr + D1mw) + 100 x (ILmr + DLmr + DLmw)
    assert counts.estimated_cycles == 1_000_000 + 10 * 8000 + 100 * 80


def test_counts_refuse_output_without_cache_simulation(tmp_path: Path) -> None:
    path = tmp_path / "cachegrind.out"
    path.write_text("events: Ir\nsummary: 1000\n")
    with pytest.raises(RuntimeError, match="without cache simulation"):
        Counts.read(path)
    path.write_text("events: Ir\n")
    with pytest.raises(RuntimeError, match="no cachegrind summary"):
        Counts.read(path)


def test_per_operation_is_the_difference_between_runs() -> None:
    def counts(ir: int) -> Counts:
        return Counts({"Ir": ir, "I1mr": 0, "ILmr": 0, "Dr": 0, "D1mr": 0, "DLmr": 0,
                       "Dw": 0, "D1mw": ir // 100, "DLmw": 0})  # fmt: skip

    figure = PerOperation.between("on", (64, counts(9_000_000), 2), (3164, counts(40_000_000), 30))
    assert figure.operations == 3100
    assert figure.instructions == pytest.approx(31_000_000 / 3100)
    assert figure.estimated_cycles == pytest.approx((31_000_000 + 10 * 310_000) / 3100)
    assert figure.sampled == 28


def last_row(text: str) -> list[str]:
    return [cell.strip() for cell in text.splitlines()[-1].strip("|").split("|")]


def test_verdict_holds_both_ratios_to_the_limit() -> None:
    off = PerOperation("off", 3100, 400_000.0, 500_000.0, 0)
    within = PerOperation("on", 3100, 416_000.0, 520_000.0, 25)
    results, text, ok = verdict(within, off, 1.05)
    assert ok and results["ok"]
    assert results["instructions_ratio"] == pytest.approx(1.04)
    assert last_row(text) == ["1.040", "1.040", "yes", "yes"]
    over = PerOperation("on", 3100, 416_000.0, 530_000.0, 25)  # cycles 1.06
    results, text, ok = verdict(over, off, 1.05)
    assert not ok and not results["ok"]
    assert last_row(text) == ["1.040", "1.060", "yes", "NO"]


def test_counted_child_runs_every_turn(pg_server: ServerInfo, tmp_path: Path) -> None:
    """The process cachegrind watches, run plainly: it ran ``operations(turns)``
    operations, each in a sampled caller trace and so each a span."""
    with scratch_database_migrated(pg_server.url) as url:
        asyncio.run(seed_messages(url, "bench", 300))
        (target,) = asyncio.run(load_targets(url, 1))
        options = Options(url, 1.0, "simple", "request", 10, 20)
        figures = tmp_path / "figures.json"
        spec = {
            "options": asdict(options),
            "index": 0,
            "user_id": target.user_id,
            "conversation_id": str(target.conversation_id),
            "turns": 12,
            "figures": str(figures),
        }
        command = counted_child_command(json.dumps(spec))
        subprocess.run(command, check=True, timeout=120)
    assert json.loads(figures.read_text()) == {"spans_exported": operations(12)}
