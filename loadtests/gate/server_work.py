"""Server work per operation, measured: for each public ChatStore operation at
a fixed seeded size, the statements it sends and, per statement, the rows its
plan touches, the shared buffers, the WAL records, the triggers that fired and
the plan's node types and indexes, against a committed budget.

Why: the latency gate's reference runs the same SQL, so a statement that got
costlier on the server (a trigger, an over-fetching read, a lost index, one
more round trip) moves both sides and cancels out of its ratio. These figures
are pages and rows, not time: the same statement over the same rows touches
the same pages whether they are cached or not.

How: the store runs on a scratch database seeded to :data:`SEED_MESSAGES`
messages (autovacuum off on its tables, so nothing prunes or re-analyses
between statements). Every statement the store sends through
``asyncpg.Connection`` is intercepted; before it runs for real it is run twice
under ``EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON)`` inside a transaction
(or savepoint) that is rolled back, and the second reading is kept (the first
may also read the catalogue). Statements that cannot be explained (BEGIN,
COMMIT) are counted only.

The budget (server_budget.json) is written only by ``python -m loadtests gate
server-work update-budget``. A figure fails above its limit: rows and WAL
records must match exactly up to :data:`ROW_SLACK` / :data:`WAL_SLACK`,
buffers may grow by :data:`BUFFER_TOLERANCE` (B-tree pages split as the
scratch data differs by a few rows); a statement, trigger, plan node type or
index not in the budget fails whatever the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg

from loadtests.gate import machine, regressions
from loadtests.gate.operations import OPERATIONS, add_user, prepare
from loadtests.gate.verdict import Finding, report

BUDGET: Final = Path(__file__).with_name("server_budget.json")
#: Messages seeded for other users before the measured user's data.
SEED_MESSAGES: Final = 100_000
SEED_CONVERSATION: Final = 20
ROW_SLACK: Final = 2
WAL_SLACK: Final = 2
BUFFER_TOLERANCE: Final = 0.25
BUFFER_SLACK: Final = 3
_EXPLAINABLE = re.compile(r"^\s*(select|insert|update|delete|with)\b", re.IGNORECASE)
_RI = re.compile(r"^RI_ConstraintTrigger_[ac]_\d+$")


@dataclass
class Work:
    """One operation's statements and their summed figures."""

    statements: list[str] = field(default_factory=list)
    rows: int = 0
    returned: int = 0
    buffers: int = 0
    wal_records: int = 0
    triggers: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)
    indexes: set[str] = field(default_factory=set)

    def as_json(self) -> dict[str, Any]:
        return {
            "statements": self.statements,
            "rows": self.rows,
            "returned": self.returned,
            "buffers": self.buffers,
            "wal_records": self.wal_records,
            "triggers": sorted(self.triggers),
            "nodes": sorted(self.nodes),
            "indexes": sorted(self.indexes),
        }


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _kind(sql: str) -> str:
    words = " ".join(sql.split()).split(" ")
    return " ".join(words[:2]).upper() if words[0].upper() == "SELECT" else words[0].upper()


class _Recorder:
    """Intercepts asyncpg's statements and explains each before it runs."""

    def __init__(self) -> None:
        self.current: Work | None = None
        self._busy = False

    async def observe(self, conn: Any, sql: str, args: tuple[Any, ...]) -> None:
        work = self.current
        if work is None or self._busy:
            return
        work.statements.append(_kind(sql))
        if not _EXPLAINABLE.match(sql):
            return
        self._busy = True
        try:
            reading: dict[str, Any] = {}
            for _ in range(2):
                reading = await self._explain(conn, sql, args)
        finally:
            self._busy = False
        top = reading["Plan"]
        nodes = list(_nodes(top))
        work.returned += int(top.get("Actual Rows", 0))
        work.rows += sum(
            int(n.get("Actual Rows", 0)) * int(n.get("Actual Loops", 1))
            for n in nodes
            if "Relation Name" in n or "Index Name" in n
        )
        work.buffers += int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))
        work.wal_records += int(top.get("WAL Records", 0))
        work.nodes |= {n["Node Type"] for n in nodes}
        work.indexes |= {n["Index Name"] for n in nodes if "Index Name" in n}
        for trigger in reading.get("Triggers", []):
            name = str(trigger.get("Trigger Name", "?"))
            relation = trigger.get("Relation", "?")
            work.triggers.add(
                f"{'RI_ConstraintTrigger' if _RI.match(name) else name} on {relation}"
            )

    async def _explain(self, conn: Any, sql: str, args: tuple[Any, ...]) -> dict[str, Any]:
        explain = "EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) " + sql
        nested = conn.is_in_transaction()
        await conn.execute("SAVEPOINT gate_explain" if nested else "BEGIN")
        try:
            raw = await conn.fetchval(explain, *args)
        finally:
            await conn.execute("ROLLBACK TO SAVEPOINT gate_explain" if nested else "ROLLBACK")
        # The store's connections decode json themselves (a codec on the engine).
        plans = json.loads(raw) if isinstance(raw, str | bytes) else raw
        found: dict[str, Any] = plans[0]
        return found


def _install(recorder: _Recorder) -> None:
    for name in ("fetch", "fetchval", "fetchrow", "execute"):
        original = getattr(asyncpg.Connection, name)

        def wrap(original: Any) -> Any:
            @functools.wraps(original)
            async def observed(self: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
                await recorder.observe(self, sql, args)
                return await original(self, sql, *args, **kwargs)

            return observed

        setattr(asyncpg.Connection, name, wrap(original))


def _seed_sql(messages: int) -> str:
    conversations = messages // SEED_CONVERSATION
    return f"""
INSERT INTO users (id, email) VALUES ('seed', 'seed@example.com');
INSERT INTO conversations (user_id, last_seq)
SELECT 'seed', {SEED_CONVERSATION} FROM generate_series(1, {conversations});
INSERT INTO messages (conversation_id, user_id, role, content, seq)
SELECT c.id, c.user_id, CASE WHEN s % 2 = 0 THEN 'assistant' ELSE 'user' END,
       'message text of a realistic length, about eighty characters long, for the heap.', s
FROM conversations c, generate_series(1, c.last_seq) s;
ALTER TABLE conversations SET (autovacuum_enabled = false);
ALTER TABLE messages SET (autovacuum_enabled = false);
ANALYZE conversations, messages;
"""


async def measure(url: str, regression: regressions.Regression | None) -> dict[str, Work]:
    """Every operation's server work, once, on the seeded database at ``url``.

    Raises:
        asyncpg.PostgresError: the database refused the seeding or a statement.
    """
    from chat_storage import ChatStore, create_engine

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(_seed_sql(SEED_MESSAGES))
        if regression is not None and regression.sql is not None:
            await conn.execute(regression.sql)  # after seeding: a trigger would slow it
    finally:
        await conn.close()
    recorder = _Recorder()
    _install(recorder)
    regressions.apply(regression)  # outside the recorder: it sees what the regression sends
    user = "server-work"
    await add_user(url, user)
    engine = create_engine(database_url=url, pool_size=1, max_overflow=0)
    store = ChatStore(engine)
    works: dict[str, Work] = {}
    try:
        calls = await prepare(store, user, 2)
        for name in OPERATIONS:
            await calls[name](0)  # warm: the statement is prepared, the pool connected
        for name in OPERATIONS:
            recorder.current = works[name] = Work()
            await calls[name](1)
            recorder.current = None
    finally:
        await engine.dispose()
    return works


def judge(works: dict[str, Work], budget: dict[str, Any]) -> list[Finding]:
    """Findings per operation: each figure, and anything new in its plans."""
    findings: list[Finding] = []
    where = "EXPLAIN (ANALYZE, BUFFERS, WAL) the operation's statement (gate server-work --show)"
    for name in OPERATIONS:
        got, expected = works[name], budget["operations"][name]
        if got.statements != expected["statements"]:
            findings.append(
                Finding(name, "statements", 0, 0, 0, where,
                        f"sends {got.statements}, budget {expected['statements']}")
            )  # fmt: skip
        for label, new in (
            ("trigger", got.triggers - set(expected["triggers"])),
            ("plan node", got.nodes - set(expected["nodes"])),
            ("index", got.indexes - set(expected["indexes"])),
        ):
            if new:
                findings.append(
                    Finding(name, f"new {label}", 0, 0, 0, where, ", ".join(sorted(new)))
                )
        for measure, key, value, limit in (
            ("rows touched", "rows", got.rows, expected["rows"] + ROW_SLACK),
            ("rows returned", "returned", got.returned, expected["returned"] + ROW_SLACK),
            ("WAL records", "wal_records", got.wal_records, expected["wal_records"] + WAL_SLACK),
            ("shared buffers", "buffers", got.buffers,
             expected["buffers"] * (1 + BUFFER_TOLERANCE) + BUFFER_SLACK),
        ):  # fmt: skip
            findings.append(
                Finding(name, measure, float(expected[key]), float(value), float(limit), where)
            )
    return findings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``gate server-work check|update-budget``."""
    sub = parser.add_subparsers(dest="work_command", required=True)
    check = sub.add_parser("check", help="measure every operation, judge against the budget")
    check.add_argument("--regression", choices=sorted(regressions.REGRESSIONS), default=None)
    check.add_argument("--budget", type=Path, default=BUDGET)
    check.add_argument("--show", action="store_true", help="print every operation's figures")
    update = sub.add_parser("update-budget", help="measure once, rewrite the budget")
    update.add_argument("--budget", type=Path, default=BUDGET)


def main(args: argparse.Namespace) -> int:
    """Run ``gate server-work``; 0 pass, 1 over the budget."""
    regression = regressions.named(getattr(args, "regression", None))
    with machine.scratch_database(None) as url:
        works = asyncio.run(measure(url, regression))
        recorded = machine.describe(seed_messages=SEED_MESSAGES)
    if getattr(args, "show", False):
        for name, work in works.items():
            print(name, json.dumps(work.as_json()))
    if args.work_command == "check":
        budget = json.loads(args.budget.read_text())
        return report("server work", judge(works, budget), budget["recorded"])
    document = {
        "_comment": (
            "Server work per ChatStore operation at a fixed seeded size "
            "(loadtests/gate/server_work.py). Written only by `python -m loadtests gate "
            "server-work update-budget`; a raise needs a reason in the commit message."
        ),
        "recorded": recorded,
        "operations": {name: work.as_json() for name, work in works.items()},
    }
    args.budget.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.budget}")
    return 0
