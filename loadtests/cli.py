"""``python -m loadtests run``: database, migrations, seed, Locust, report, verdict.

The database: ``DATABASE_URL`` if set (used as is: the users table must exist;
only rows of users ``loadtest-<runid>-*`` are written, and deleted afterwards
unless ``--keep-data``), else a scratch database on ``devdb``'s server
(a minimal ``users`` stand-in is created there; the database is dropped at the end).

Exit status: 0 when every operation met its p95 target with no failed request,
1 when not, 2 when the run could not be made (database, migrations, seed, Locust).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from loadtests import report
from loadtests.seed import (
    SeedError,
    SeedPlan,
    create_users_standin,
    delete_seeded,
    seed,
    users_table_columns,
)
from loadtests.workload import OPERATIONS

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
ROOT = LOCUSTFILE.parent.parent


class SetupError(RuntimeError):
    """The run cannot start (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="migrate, seed, run Locust headless, report the p95 verdict")
    g = run.add_argument_group("load")
    g.add_argument("--users", type=int, default=100, help="concurrent Locust users (100)")
    g.add_argument("--spawn-rate", type=float, default=50.0, help="users started per second (50)")
    g.add_argument("--warmup", type=float, default=10.0, help="seconds before stats reset (10)")
    g.add_argument("--duration", type=float, default=60.0, help="measured seconds (60)")
    g.add_argument(
        "--mode",
        choices=("paced", "stress", "think"),
        default="paced",
        help="paced: --rate tasks/s per user on a fixed random-phase schedule (default); "
        "stress: closed loop, "
        "no wait; think: random wait in [--think-min, --think-max]",
    )
    g.add_argument("--rate", type=float, default=1.0, help="paced: tasks per second per user (1)")
    g.add_argument("--think-min", type=float, default=1.0, help="think mode: min wait s (1)")
    g.add_argument("--think-max", type=float, default=5.0, help="think mode: max wait s (5)")
    g.add_argument("--reply-delay", type=float, default=0.0, help="s between user msg and reply")
    g.add_argument(
        "--weights", default="20,3,2,1", help="task weights turn,switch,new,archive (20,3,2,1)"
    )
    g.add_argument(
        "--driver",
        choices=("store", "raw", "both"),
        default="store",
        help="store: ChatStore; raw: asyncpg reference, same SQL; both: half each",
    )
    g.add_argument("--processes", type=int, default=1, help="Locust processes (1)")
    g.add_argument("--pool-size", type=int, default=10, help="pool size per process (10)")
    g.add_argument("--max-overflow", type=int, default=20, help="pool overflow per process (20)")
    s = run.add_argument_group("seed")
    s.add_argument("--messages", type=int, default=20_000, help="seeded messages (20000)")
    s.add_argument("--conversations", type=int, help="default max(1000, messages/20)")
    s.add_argument("--seed-users", type=int, help="default max(200, conversations/5, --users)")
    s.add_argument("--max-history", type=int, default=5000, help="longest history (5000)")
    s.add_argument("--keep-data", action="store_true", help="keep seeded rows (DATABASE_URL)")
    t = run.add_argument_group("targets (p95, ms; 0 = none)")
    t.add_argument("--target-history-ms", type=float, default=100.0, help="history_read (100)")
    t.add_argument("--target-insert-ms", type=float, default=50.0, help="message_insert (50)")
    t.add_argument("--target-other-ms", type=float, default=100.0, help="create/list/archive (100)")
    o = run.add_argument_group("output")
    o.add_argument("--reports-dir", default=str(ROOT / "reports"), help="(reports/)")
    o.add_argument("--metrics-port", type=int, default=9464, help="Prometheus port (9464; 0 off)")
    o.add_argument("--chart-interval", type=float, default=2.0, help="chart resolution s (2)")
    honesty = sub.add_parser(
        "honesty",
        help="the harness's p95 against a pure-asyncio driver of the same calls (target < 2 ms)",
    )
    h = honesty.add_argument_group("load (the same paced workload on both drivers)")
    h.add_argument("--users", type=int, default=100, help="concurrent users (100)")
    h.add_argument("--rate", type=float, default=1.0, help="tasks per second per user (1)")
    h.add_argument("--warmup", type=float, default=5.0, help="seconds not measured (5)")
    h.add_argument("--duration", type=float, default=30.0, help="measured seconds per phase (30)")
    h.add_argument("--rounds", type=int, default=2, help="Locust/asyncio alternations (2)")
    h.add_argument("--weights", default="20,3,2,1", help="turn,switch,new,archive (20,3,2,1)")
    h.add_argument("--pool-size", type=int, default=10, help="pool size (10)")
    h.add_argument("--max-overflow", type=int, default=20, help="pool overflow (20)")
    h.add_argument("--messages", type=int, default=20_000, help="seeded messages (20000)")
    h.add_argument("--target-diff-ms", type=float, default=2.0, help="max p95 added (2)")
    h.add_argument("--reports-dir", default=str(ROOT / "reports"), help="(reports/)")
    return parser


def targets_from(args: argparse.Namespace) -> dict[str, float | None]:
    """Operation -> p95 target in ms (None: no target)."""

    def t(value: float) -> float | None:
        return value if value > 0 else None

    other = t(args.target_other_ms)
    return {
        "history_read": t(args.target_history_ms),
        "message_insert": t(args.target_insert_ms),
        "conversation_create": other,
        "conversation_list": other,
        "conversation_archive": other,
    }


def loop_safe_url(url: str) -> str:
    """``url`` with ``localhost`` replaced by ``127.0.0.1``.

    The locustfile's event loop runs in a thread of a gevent-patched process:
    resolving a name there goes through a patched resolver (and localhost may
    resolve to ::1 first, where the server may not listen). An IP address needs
    no resolution at all.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.host in ("localhost", "localhost.localdomain"):
        parsed = parsed.set(host="127.0.0.1")
    return parsed.render_as_string(hide_password=False)


def redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@contextlib.contextmanager
def resolve_database() -> Iterator[tuple[str, bool, str]]:
    """(url, is_scratch, description) for the run."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url, False, f"DATABASE_URL {redacted(url)}"
        return
    from devdb import provide_server, scratch_database

    with provide_server() as server, scratch_database(server.url, prefix="loadtest") as scratch:
        yield scratch, True, f"scratch database {redacted(scratch)} on {server.description}"


def prepare(url: str, scratch: bool) -> None:
    """Ensure a users table (stand-in on scratch only) and migrate to head."""
    from chat_storage.migrations import upgrade

    async def check() -> bool:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            return await users_table_columns(conn) is not None
        finally:
            await conn.close()

    if not asyncio.run(check()):
        if not scratch:
            raise SetupError(
                "the DATABASE_URL database has no users table: conversations reference the "
                "application's users, so apply the application's migrations first (the harness "
                "creates a users stand-in only in a scratch database it made itself)"
            )
        asyncio.run(create_users_standin(url))
        print("  created a minimal users stand-in table (scratch database)")
    upgrade(url)


def locust_command(
    args: argparse.Namespace, out: Path, samples: Path, run_id: str, seeded: int
) -> list[str]:
    classes = {
        "store": ["StoreChatUser"],
        "raw": ["RawChatUser"],
        "both": ["StoreChatUser", "RawChatUser"],
    }
    run_time = max(1, round(args.warmup + args.duration))
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{run_time}s",
        "--html", str(out / "locust.html"), "--csv", str(out / "locust"), "--csv-full-history",
        "--only-summary", "--exit-code-on-error", "0", "--stop-timeout", "0",
        "--chat-run-id", run_id, "--chat-seed-users", str(seeded),
        "--chat-mode", args.mode, "--chat-rate", str(args.rate),
        "--chat-think-min", str(args.think_min), "--chat-think-max", str(args.think_max),
        "--chat-reply-delay", str(args.reply_delay), "--chat-weights", args.weights,
        "--chat-pool-size", str(args.pool_size), "--chat-max-overflow", str(args.max_overflow),
        "--chat-worker-count", str(max(1, args.processes)), "--chat-warmup", str(args.warmup),
        "--chat-samples-dir", str(samples), "--chat-metrics-port", str(args.metrics_port),
    ]  # fmt: skip
    if args.processes > 1:
        cmd += ["--processes", str(args.processes)]
    return cmd + classes[args.driver]


def run_locust(cmd: Sequence[str], env: dict[str, str], log: Path, seconds: float) -> int:
    """Run Locust, output to ``log``, a progress line on stderr; its exit status."""
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            while proc.poll() is None:
                elapsed = time.monotonic() - started
                sys.stderr.write(f"\r  locust running {elapsed:5.0f}s / ~{seconds:.0f}s")
                sys.stderr.flush()
                if elapsed > seconds + 120:
                    proc.terminate()
                    proc.wait(10)
                    raise SetupError(f"Locust did not stop in time; see {log}")
                time.sleep(1.0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sys.stderr.write("\n")
    return proc.returncode


def run(args: argparse.Namespace) -> int:
    started_at = datetime.now(UTC)
    run_id = started_at.strftime("%Y%m%d%H%M%S") + secrets.token_hex(3)
    out = Path(args.reports_dir) / started_at.strftime("%Y%m%dT%H%M%SZ")
    if out.exists():
        out = out.with_name(out.name + "-" + run_id[-6:])
    out.mkdir(parents=True)
    targets = targets_from(args)
    drivers = {"store": ["chat"], "raw": ["raw"], "both": ["chat", "raw"]}[args.driver]
    plan = SeedPlan.scaled(
        args.messages,
        users=args.seed_users,
        conversations=args.conversations,
        max_history=args.max_history,
        min_users=args.users,
    )
    with contextlib.ExitStack() as stack:
        url, scratch, description = stack.enter_context(resolve_database())
        print(f"database: {description}")
        print(f"run id:   {run_id}  (seeded user ids start with loadtest-{run_id}-)")
        print(f"reports:  {out}")
        prepare(url, scratch)
        if not scratch and not args.keep_data:
            stack.callback(_cleanup, url, run_id)
        print(
            f"seeding {plan.users:,} users, {plan.conversations:,} conversations, "
            f"{plan.messages:,} messages (longest history {plan.max_history:,})"
        )
        t0 = time.perf_counter()
        counts = asyncio.run(seed(url, run_id, plan))
        print(f"  seeded in {time.perf_counter() - t0:.1f}s: {counts}")

        samples_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loadtest-")))
        env = dict(os.environ, LOADTEST_DATABASE_URL=loop_safe_url(url), PYTHONPATH=_pythonpath())
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if args.processes > 1:
            multiproc = stack.enter_context(tempfile.TemporaryDirectory(prefix="loadtest-prom-"))
            env["PROMETHEUS_MULTIPROC_DIR"] = multiproc
        if args.metrics_port:
            print(f"metrics:  http://127.0.0.1:{args.metrics_port}/metrics (while Locust runs)")
        print(
            f"locust:   {args.users} users ({args.driver}), spawn {args.spawn_rate:g}/s, "
            f"mode {args.mode}, {args.processes} process(es), warm-up {args.warmup:g}s, "
            f"measured {args.duration:g}s"
        )
        cmd = locust_command(args, out, samples_dir, run_id, plan.users)
        code = run_locust(cmd, env, out / "locust.log", args.warmup + args.duration)
        phases = _phases(samples_dir)
        if "reset_at" not in phases:
            raise SetupError(
                f"Locust exited ({code}) before the warm-up ended; see {out / 'locust.log'}"
            )
        start, end = phases["reset_at"], phases.get("stopped_at")
        samples = report.read_samples(samples_dir, start, end)
        rows = report.summarize(samples, targets, drivers)
        task_errors = _task_errors(out / "locust_exceptions.csv")
        verdict = report.verdict(rows) if task_errors == 0 else "fail"
        measured = (end if end is not None else (samples[-1].t if samples else start)) - start
        summary = {
            "operations": [row.as_json() for row in rows],
            "users": args.users,
            "duration_s": round(measured, 2),
            "warmup_s": args.warmup,
            "mode": args.mode,
            "driver": args.driver,
            "processes": args.processes,
            "seed": counts,
            "task_errors": task_errors,
            "verdict": verdict,
            "database": description,
            "started_at": started_at.isoformat(),
            "run_id": run_id,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        report.chart(
            samples, start, targets, out / "latency.png", drivers,
            interval=args.chart_interval,
            title=f"{args.users} users, {args.mode}, {args.driver} — p50/p95/p99 per interval",
        )  # fmt: skip
        print()
        print(report.format_table(rows))
        print()
        if task_errors:
            print(f"{task_errors} exception(s) inside Locust tasks: see {out / 'locust.html'}")
        print(f"verdict: {verdict.upper()}   ({measured:.0f}s measured, report in {out})")
        return 0 if verdict == "pass" else 1


def honesty(args: argparse.Namespace) -> int:
    """Alternate Locust and pure-asyncio phases on one seeded database; compare p95s."""
    from loadtests.honesty import run_pure

    started_at = datetime.now(UTC)
    run_id = started_at.strftime("%Y%m%d%H%M%S") + secrets.token_hex(3)
    out = Path(args.reports_dir) / (started_at.strftime("%Y%m%dT%H%M%SZ") + "-honesty")
    out.mkdir(parents=True)
    plan = SeedPlan.scaled(args.messages, min_users=args.users)
    none: dict[str, float | None] = dict.fromkeys(OPERATIONS, None)
    with contextlib.ExitStack() as stack:
        url, scratch, description = stack.enter_context(resolve_database())
        print(f"database: {description}")
        prepare(url, scratch)
        if not scratch:
            stack.callback(_cleanup, url, run_id)
        counts = asyncio.run(seed(url, run_id, plan))
        print(f"  seeded: {counts}")
        locust_args = build_parser().parse_args(
            ["run", "--users", str(args.users), "--spawn-rate", str(args.users),
             "--rate", str(args.rate), "--warmup", str(args.warmup),
             "--duration", str(args.duration), "--weights", args.weights,
             "--pool-size", str(args.pool_size), "--max-overflow", str(args.max_overflow),
             "--metrics-port", "0", "--mode", "paced", "--driver", "store"]
        )  # fmt: skip
        env = dict(os.environ, LOADTEST_DATABASE_URL=loop_safe_url(url), PYTHONPATH=_pythonpath())
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        harness: list[report.Sample] = []
        pure: list[report.Sample] = []
        for n in range(1, args.rounds + 1):
            print(f"round {n}/{args.rounds}: Locust harness, {args.users} users")
            phase_dir = out / f"locust-{n}"
            phase_dir.mkdir()
            samples_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="honest-")))
            cmd = locust_command(locust_args, phase_dir, samples_dir, run_id, plan.users)
            run_locust(cmd, env, phase_dir / "locust.log", args.warmup + args.duration)
            phases = _phases(samples_dir)
            if "reset_at" not in phases:
                raise SetupError(f"Locust stopped early; see {phase_dir / 'locust.log'}")
            harness += report.read_samples(
                samples_dir, phases["reset_at"], phases.get("stopped_at")
            )
            print(f"round {n}/{args.rounds}: pure asyncio, {args.users} users")
            pure += asyncio.run(
                run_pure(
                    loop_safe_url(url), run_id, plan.users, users=args.users, rate=args.rate,
                    weights=args.weights, warmup=args.warmup, duration=args.duration,
                    pool_size=args.pool_size, max_overflow=args.max_overflow,
                )
            )  # fmt: skip
    by_harness = {r.name: r for r in report.summarize(harness, none, ["chat"])}
    by_pure = {r.name: r for r in report.summarize(pure, none, ["chat"])}
    judged = ("history_read", "message_insert")
    lines = [
        f"{'operation':<22}{'n harness':>10}{'n asyncio':>10}{'p95 harness':>13}"
        f"{'p95 asyncio':>13}{'added ms':>10}",
        "-" * 78,
    ]
    results = []
    ok = True
    for name in OPERATIONS:
        a, b = by_harness.get(name), by_pure.get(name)
        if a is None or b is None or a.p95_ms is None or b.p95_ms is None:
            continue
        added = a.p95_ms - b.p95_ms
        passed = added < args.target_diff_ms if name in judged else None
        ok = ok and passed is not False
        mark = {True: "PASS", False: "FAIL", None: "(not judged: few samples)"}[passed]
        lines.append(
            f"{name:<22}{a.count:>10}{b.count:>10}{a.p95_ms:>13.2f}{b.p95_ms:>13.2f}"
            f"{added:>+10.2f}  {mark}"
        )
        results.append(
            {"operation": name, "harness": a.as_json(), "asyncio": b.as_json(),
             "p95_added_ms": round(added, 3), "pass": passed}
        )  # fmt: skip
    table = "\n".join(lines)
    print()
    print(table)
    verdict = "pass" if ok and results else "fail"
    summary = {
        "users": args.users, "rate": args.rate, "rounds": args.rounds,
        "duration_s_per_phase": args.duration, "target_added_p95_ms": args.target_diff_ms,
        "operations": results, "verdict": verdict, "database": description,
        "started_at": started_at.isoformat(),
    }  # fmt: skip
    (out / "honesty.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nverdict: {verdict.upper()}   (report in {out})")
    return 0 if verdict == "pass" else 1


def _cleanup(url: str, run_id: str) -> None:
    deleted = asyncio.run(delete_seeded(url, run_id))
    print(f"cleanup: deleted {deleted} seeded users (their conversations and messages cascade)")


def _task_errors(path: Path) -> int:
    """Exceptions raised inside tasks (harness bugs, not request failures)."""
    if not path.exists():
        return 0
    with path.open(newline="") as f:
        return sum(int(row.get("Count") or 0) for row in csv.DictReader(f))


def _phases(directory: Path) -> dict[str, float]:
    path = directory / "phases.json"
    if not path.exists():
        return {}
    phases: dict[str, float] = json.loads(path.read_text())
    return phases


def _pythonpath() -> str:
    current = os.environ.get("PYTHONPATH")
    return str(ROOT) + (os.pathsep + current if current else "")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return honesty(args) if args.command == "honesty" else run(args)
    except (SetupError, SeedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from chat_storage.migrations import MigrationError

        if isinstance(exc, MigrationError):
            print(f"error: migrations refused: {exc}", file=sys.stderr)
            return 2
        raise
