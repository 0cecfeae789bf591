"""Instructions per operation, counted by Valgrind's cachegrind: the
instrumentation benchmark's deterministic figure (``instrumentation --instructions``).

Why: the timed figures (CPU per operation in a closed loop and at equal load)
spread 2-3 points between runs on a shared two-core machine, and in a closed
loop CPU per operation also depends on the rate, so a variant that runs slower
pays more per operation for that alone. The instructions one session's
operations execute depend on neither: the same run counts the same within a
few tenths of a percent, on a busy machine or an idle one.

How: each variant runs in a process of its own under cachegrind, one session
doing turns back to back, twice: ``base`` turns, then ``base + turns`` turns.
The difference between the two runs' totals, divided by the difference in
operations, is the per-operation figure: interpreter start-up, imports,
connecting, warm-up and shutdown are in both runs and cancel. After the first
:data:`FREEZE_AFTER` turns the child calls ``gc.freeze()``, so that a full
collection walks only what the turns themselves keep alive, not the start-up
heap (a full collection over the imported libraries is tens of millions of
instructions, and whether one falls inside a run would otherwise decide its
figure). ``PYTHONHASHSEED=0`` fixes the order of sets and dicts of strings.

What it does not see: time spent waiting, the server's work, and the real
machine's caches. Cachegrind simulates an L1 and a last-level cache; the
"estimated cycles" column weighs its misses as KCachegrind does (an L1 miss 10
instructions, a last-level miss 100), a rough account of code and data that
the instrumented variant brings into the caches. The simulated caches are
fixed (:data:`SIMULATED_CACHES`), not the host's.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from loadtests.bench.report import table, verdict_cell
from loadtests.bench.sessions import LIST_EVERY, Target, Texts, run_turn
from loadtests.core.backends import Backend

#: Turns before ``gc.freeze()`` (both runs have at least this many).
FREEZE_AFTER: Final = 10
#: Fixed simulated caches (size, associativity, line size), so that figures from
#: different machines compare (by default cachegrind copies the host's, and
#: warns on hosts with an L3): 32 KiB L1s and an 8 MiB last level, typical of
#: a current x86-64 server core's share.
SIMULATED_CACHES: Final = ("--I1=32768,8,64", "--D1=32768,8,64", "--LL=8388608,16,64")
#: Cachegrind's events, in the order it writes them with ``--cache-sim=yes``.
_EVENTS: Final = ("Ir", "I1mr", "ILmr", "Dr", "D1mr", "DLmr", "Dw", "D1mw", "DLmw")


def operations(turns: int) -> int:
    """Operations in turns 0 .. turns-1: a read and two appends each, and a
    listing in every turn that is a multiple of LIST_EVERY (sessions.run_turn)."""
    return 3 * turns + (turns + LIST_EVERY - 1) // LIST_EVERY


@dataclass(frozen=True)
class Counts:
    """Cachegrind's totals for one process."""

    events: dict[str, int]

    @property
    def instructions(self) -> int:
        return self.events["Ir"]

    @property
    def estimated_cycles(self) -> int:
        e = self.events
        l1 = e["I1mr"] + e["D1mr"] + e["D1mw"]
        last_level = e["ILmr"] + e["DLmr"] + e["DLmw"]
        return e["Ir"] + 10 * l1 + 100 * last_level

    @classmethod
    def read(cls, path: Path) -> Counts:
        """Parse a ``cachegrind.out`` file's ``events:`` and ``summary:`` lines."""
        names: list[str] = []
        totals: list[int] = []
        for line in path.read_text().splitlines():
            if line.startswith("events:"):
                names = line.split()[1:]
            elif line.startswith("summary:"):
                totals = [int(v) for v in line.split()[1:]]
        if not names or len(names) != len(totals):
            raise RuntimeError(f"{path}: no cachegrind summary (events {names}, totals {totals})")
        events = dict(zip(names, totals, strict=True))
        missing = [e for e in _EVENTS if e not in events]
        if missing:
            raise RuntimeError(f"{path}: cachegrind ran without cache simulation ({missing})")
        return cls(events)


@dataclass(frozen=True)
class PerOperation:
    """One variant's difference between its long and short run."""

    name: str
    operations: int
    instructions: float
    estimated_cycles: float
    #: Operations that ran in a sampled trace, among ``operations`` (spans exported).
    sampled: int

    @classmethod
    def between(
        cls, name: str, short: tuple[int, Counts, int], long: tuple[int, Counts, int]
    ) -> PerOperation:
        (short_ops, short_counts, short_spans), (long_ops, long_counts, long_spans) = short, long
        ops = long_ops - short_ops
        return cls(
            name,
            ops,
            (long_counts.instructions - short_counts.instructions) / ops,
            (long_counts.estimated_cycles - short_counts.estimated_cycles) / ops,
            long_spans - short_spans,
        )


def valgrind() -> str:
    """The ``valgrind`` executable, or a clear error saying how to get it."""
    path = shutil.which("valgrind")
    if path is None:
        raise SystemExit(
            "--instructions needs Valgrind's cachegrind: apt-get install valgrind "
            "(or your platform's package)"
        )
    return path


def count(
    spec: dict[str, Any],
    variants: Sequence[str],
    targets: Sequence[Target],
    base: int,
    turns: int,
    child: Callable[[str], list[str]],
) -> list[PerOperation]:
    """Count each variant at ``base`` and ``base + turns`` turns; the variants
    of one length run at the same time.

    ``child(spec_json)`` is the command of one counted process (it runs
    :func:`run_turns` on variant ``index`` built from ``spec``; see
    ``instrumentation.counted_child``).

    Raises:
        ValueError: ``base`` below :data:`FREEZE_AFTER` or ``turns`` below 1.
        RuntimeError: a counted process failed.
    """
    if base < FREEZE_AFTER or turns < 1:
        raise ValueError(f"base must be at least {FREEZE_AFTER} turns and turns at least 1")
    executable = valgrind()
    runs: dict[tuple[int, int], tuple[int, Counts, int]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as scratch:
        for length in (base, base + turns):
            running = []
            for index, target in enumerate(targets[: len(variants)]):
                out = Path(scratch) / f"{index}-{length}"
                order = {
                    "options": spec,
                    "index": index,
                    "user_id": target.user_id,
                    "conversation_id": str(target.conversation_id),
                    "turns": length,
                    "figures": str(out.with_suffix(".json")),
                }
                command = [
                    executable,
                    "--tool=cachegrind",
                    "--cache-sim=yes",
                    *SIMULATED_CACHES,
                    "-q",
                    f"--cachegrind-out-file={out.with_suffix('.cg')}",
                    *child(json.dumps(order)),
                ]
                env = {**os.environ, "PYTHONHASHSEED": "0"}
                running.append((index, out, subprocess.Popen(command, env=env)))
            # Both finish before either is judged: none is left using the database.
            statuses = [process.wait() for _, _, process in running]
            for (index, out, _), status in zip(running, statuses, strict=True):
                if status != 0:
                    name = variants[index]
                    raise RuntimeError(f"variant {name} exited with {status} under cachegrind")
                figures = json.loads(out.with_suffix(".json").read_text())
                counts = Counts.read(out.with_suffix(".cg"))
                runs[index, length] = (operations(length), counts, int(figures["spans_exported"]))
    return [
        PerOperation.between(name, runs[i, base], runs[i, base + turns])
        for i, name in enumerate(variants)
    ]


def verdict(
    subject: PerOperation, reference: PerOperation, max_ratio: float
) -> tuple[dict[str, Any], str, bool]:
    """The results, the printed tables, and whether both ratios are within ``max_ratio``."""
    instructions = subject.instructions / reference.instructions
    cycles = subject.estimated_cycles / reference.estimated_cycles
    ok = instructions <= max_ratio and cycles <= max_ratio
    per_variant = table(
        ["variant", "instructions/op", "est. cycles/op", "operations", "in sampled traces"],
        [
            [v.name, f"{v.instructions:,.0f}", f"{v.estimated_cycles:,.0f}", str(v.operations),
             str(v.sampled)]
            for v in (subject, reference)
        ],
    )  # fmt: skip
    limit = f"<= {max_ratio:g}x"
    ratios = table(
        [f"instructions {subject.name}/{reference.name}", "est. cycles", f"{limit} instructions",
         f"{limit} cycles"],
        [[f"{instructions:.3f}", f"{cycles:.3f}", verdict_cell(instructions <= max_ratio),
          verdict_cell(cycles <= max_ratio)]],
    )  # fmt: skip
    results = {
        "variants": [dataclasses.asdict(v) for v in (subject, reference)],
        "instructions_ratio": instructions,
        "estimated_cycles_ratio": cycles,
        "max_ratio": max_ratio,
        "ok": ok,
    }
    return results, per_variant + "\n\n" + ratios, ok


async def run_turns(backend: Backend, target: Target, turns: int) -> dict[str, float]:
    """What a counted process runs: ``turns`` turns of one session, ``gc.freeze()``
    after :data:`FREEZE_AFTER`; the backend's final figures."""
    texts = Texts.draw()
    await backend.open()
    try:
        for turn in range(turns):
            if turn == FREEZE_AFTER:
                gc.collect()
                gc.freeze()
            await run_turn(backend, target, turn, texts, None)
    finally:
        await backend.close()
    final = getattr(backend, "final_figures", None)
    figures: dict[str, float] = final() if callable(final) else {}
    return figures
