"""``python -m loadtests run`` and ``honesty``: database, migrations, seed, Locust, report.

The database: ``DATABASE_URL`` if set (used as is: the users table must exist;
only rows of users ``loadtest-<runid>-*`` are written, and deleted afterwards
unless ``--keep-data``), else a scratch database on ``devdb``'s server
(a minimal ``users`` stand-in is created there; the database is dropped at the end).

Exit status: 0 when every operation met its p95 target with no failed request,
1 when not, 2 when the run could not be made (options, database, migrations,
seed, Locust).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from loadtests.core.database import SetupError, loop_safe_url, prepare, resolve_database
from loadtests.core.options import at_least, port, positive
from loadtests.core.seed import SeedPlan, delete_seeded, seed
from loadtests.core.workload import (
    ADD_MESSAGE,
    ARCHIVE_CONVERSATION,
    CREATE_CONVERSATION,
    GET_HISTORY,
    LIST_CONVERSATIONS,
    OPERATIONS,
    RAW,
    REQUIRED,
    STORE,
)
from loadtests.harness import environment, html, report
from loadtests.harness.client import parse_weights

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
ROOT = LOCUSTFILE.parents[2]
#: Seconds Locust's own -t allows beyond warm-up + duration: only a backstop,
#: the locustfile quits when the measured window ends.
RUN_TIME_BACKSTOP = 30


def _weights(text: str) -> str:
    parse_weights(text)  # raises ValueError: argparse reports it on one line
    return text


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    """``run``'s options (each value checked: a bad one is one error line, exit 2)."""
    g = run.add_argument_group("load")
    g.add_argument("--users", type=at_least(1), default=100, help="concurrent Locust users (100)")
    g.add_argument(
        "--spawn-rate", type=positive, default=50.0, help="users started per second (50)"
    )
    g.add_argument(
        "--warmup", type=at_least(0.0), default=10.0, help="seconds before stats reset (10)"
    )
    g.add_argument("--duration", type=positive, default=60.0, help="measured seconds (60)")
    g.add_argument(
        "--mode",
        choices=("paced", "stress", "think"),
        default="paced",
        help="paced: --rate tasks/s per user on a fixed random-phase schedule (default); "
        "stress: closed loop, "
        "no wait; think: random wait in [--think-min, --think-max]",
    )
    g.add_argument(
        "--rate", type=positive, default=1.0, help="paced: tasks per second per user (1)"
    )
    g.add_argument("--think-min", type=at_least(0.0), default=1.0, help="think: min wait s (1)")
    g.add_argument("--think-max", type=at_least(0.0), default=5.0, help="think: max wait s (5)")
    g.add_argument(
        "--reply-delay", type=at_least(0.0), default=0.0, help="s between user msg and reply"
    )
    g.add_argument(
        "--weights",
        type=_weights,
        default="20,3,2,1",
        help="task weights turn,switch,new,archive (20,3,2,1)",
    )
    g.add_argument(
        "--driver",
        choices=("store", "raw", "both"),
        default="store",
        help="store: ChatStore; raw: asyncpg reference, same SQL; both: half each",
    )
    g.add_argument("--processes", type=at_least(1), default=1, help="Locust processes (1)")
    d = run.add_argument_group("several load machines (Locust's master/worker mode)")
    role = d.add_mutually_exclusive_group()
    role.add_argument(
        "--master",
        action="store_true",
        help="migrate, seed, run Locust's master and report; workers connect to it",
    )
    role.add_argument(
        "--worker",
        action="store_true",
        help="only a Locust worker for --master-host (DATABASE_URL: the master's database)",
    )
    d.add_argument("--expect-workers", type=at_least(1), default=1, help="master: workers (1)")
    d.add_argument(
        "--expect-workers-max-wait",
        type=at_least(1),
        default=120,
        help="master: seconds to wait for them (120)",
    )
    d.add_argument(
        "--master-bind-host", default="*", help="master: interface to listen on (* = all)"
    )
    d.add_argument("--master-host", default="127.0.0.1", help="worker: the master's address")
    d.add_argument("--master-port", type=port, default=5557, help="master's port (5557)")
    g.add_argument("--pool-size", type=at_least(1), default=10, help="pool size per process (10)")
    g.add_argument(
        "--max-overflow", type=at_least(0), default=20, help="pool overflow per process (20)"
    )
    s = run.add_argument_group("seed")
    s.add_argument("--messages", type=at_least(0), default=20_000, help="seeded messages (20000)")
    s.add_argument("--conversations", type=at_least(1), help="default max(1000, messages/20)")
    s.add_argument(
        "--seed-users", type=at_least(1), help="default max(200, conversations/5, --users)"
    )
    s.add_argument("--max-history", type=at_least(1), default=5000, help="longest history (5000)")
    s.add_argument("--keep-data", action="store_true", help="keep seeded rows (DATABASE_URL)")
    t = run.add_argument_group("targets (p95, ms; 0 = none)")
    t.add_argument(
        "--target-history-ms", type=at_least(0.0), default=100.0, help=f"{GET_HISTORY} (100)"
    )
    t.add_argument(
        "--target-insert-ms", type=at_least(0.0), default=50.0, help=f"{ADD_MESSAGE} (50)"
    )
    t.add_argument(
        "--target-other-ms", type=at_least(0.0), default=100.0, help="create/list/archive (100)"
    )
    o = run.add_argument_group("output")
    o.add_argument("--reports-dir", default=str(ROOT / "reports"), help="(reports/)")
    o.add_argument("--metrics-port", type=port, default=9464, help="Prometheus port (9464; 0 off)")
    o.add_argument("--chart-interval", type=positive, default=2.0, help="chart resolution s (2)")


def add_honesty_arguments(honesty: argparse.ArgumentParser) -> None:
    """``honesty``'s options."""
    h = honesty.add_argument_group("load (the same paced workload on both drivers)")
    h.add_argument("--users", type=at_least(1), default=100, help="concurrent users (100)")
    h.add_argument("--rate", type=positive, default=1.0, help="tasks per second per user (1)")
    h.add_argument("--warmup", type=at_least(0.0), default=5.0, help="seconds not measured (5)")
    h.add_argument(
        "--duration", type=positive, default=30.0, help="measured seconds per phase (30)"
    )
    h.add_argument("--rounds", type=at_least(1), default=2, help="Locust/asyncio alternations (2)")
    h.add_argument(
        "--weights", type=_weights, default="20,3,2,1", help="turn,switch,new,archive (20,3,2,1)"
    )
    h.add_argument("--pool-size", type=at_least(1), default=10, help="pool size (10)")
    h.add_argument("--max-overflow", type=at_least(0), default=20, help="pool overflow (20)")
    h.add_argument("--messages", type=at_least(0), default=20_000, help="seeded messages (20000)")
    h.add_argument("--target-diff-ms", type=positive, default=2.0, help="max p95 added (2)")
    h.add_argument("--reports-dir", default=str(ROOT / "reports"), help="(reports/)")


def check_run_arguments(args: argparse.Namespace) -> None:
    """What one option's type cannot check.

    Raises:
        SetupError: ``--think-max`` below ``--think-min``; ``--master`` with ``--processes``.
    """
    if args.think_max < args.think_min:
        raise SetupError("argument --think-max: must be at least --think-min")
    if getattr(args, "master", False) and args.processes > 1:
        raise SetupError("argument --master: not with --processes (the workers are the processes)")


def targets_from(args: argparse.Namespace) -> dict[str, float | None]:
    """Operation -> p95 target in ms (None: no target)."""

    def t(value: float) -> float | None:
        return value if value > 0 else None

    other = t(args.target_other_ms)
    return {
        GET_HISTORY: t(args.target_history_ms),
        ADD_MESSAGE: t(args.target_insert_ms),
        CREATE_CONVERSATION: other,
        LIST_CONVERSATIONS: other,
        ARCHIVE_CONVERSATION: other,
    }


def locust_command(
    args: argparse.Namespace,
    out: Path,
    samples: Path,
    run_id: str,
    seeded: int,
    database_url: str | None = None,
) -> list[str]:
    """Locust's command line for one run (``database_url``: forwarded to --master's workers)."""
    classes = {
        "store": ["StoreChatUser"],
        "raw": ["RawChatUser"],
        "both": ["StoreChatUser", "RawChatUser"],
    }
    run_time = round(args.warmup + args.duration) + RUN_TIME_BACKSTOP
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
        "--chat-worker-count", str(_worker_count(args)), "--chat-warmup", str(args.warmup),
        "--chat-duration", str(args.duration),
        "--chat-samples-dir", str(samples), "--chat-metrics-port", str(args.metrics_port),
    ]  # fmt: skip
    if args.processes > 1:
        cmd += ["--processes", str(args.processes)]
    if getattr(args, "master", False):
        cmd += [
            "--master", "--expect-workers", str(args.expect_workers),
            "--expect-workers-max-wait", str(args.expect_workers_max_wait),
            "--master-bind-host", args.master_bind_host,
            "--master-bind-port", str(args.master_port),
        ]  # fmt: skip
        if database_url:
            cmd += ["--chat-database-url", database_url]
    return cmd + classes[args.driver]


def _worker_count(args: argparse.Namespace) -> int:
    if getattr(args, "master", False):
        return int(args.expect_workers)
    return max(1, int(args.processes))


def worker_command(args: argparse.Namespace) -> list[str]:
    """A Locust worker of the harness's locustfile, for ``--master-host``.

    The worker takes every ``--chat-*`` option from the master when the test
    starts; only where the master is, and the user classes, are given here.
    """
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker",
        "--master-host", args.master_host, "--master-port", str(args.master_port),
    ]  # fmt: skip


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


@dataclass
class Prepared:
    """A migrated, seeded database for one or more Locust runs."""

    url: str
    scratch: bool
    description: str
    run_id: str
    plan: SeedPlan
    counts: dict[str, int]
    server: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Measurement:
    """One Locust run's measured window."""

    samples: list[report.Sample]
    start: float
    end: float | None
    measured_s: float
    task_errors: int
    exit_code: int
    workers: dict[str, list[str]]
    client_cpu_s: float


def new_run_id() -> tuple[datetime, str]:
    """(now, a run id that names the seeded users ``loadtest-<runid>-*``)."""
    started_at = datetime.now(UTC)
    return started_at, started_at.strftime("%Y%m%d%H%M%S") + secrets.token_hex(3)


def report_dir(reports_dir: str, started_at: datetime, run_id: str, suffix: str = "") -> Path:
    """A new directory for the run's report."""
    out = Path(reports_dir) / (started_at.strftime("%Y%m%dT%H%M%SZ") + suffix)
    if out.exists():
        out = out.with_name(out.name + "-" + run_id[-6:])
    out.mkdir(parents=True)
    return out


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does) for the block, so a
    stopped run still unwinds: seeded rows deleted, scratch database dropped."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def prepare_run(
    stack: contextlib.ExitStack, args: argparse.Namespace, run_id: str, plan: SeedPlan
) -> Prepared:
    """Database, round trip, migrations, seed; cleanup registered on ``stack``
    before anything is written, so an interrupted or failed run removes its rows.

    Raises:
        SetupError: the database cannot be used.
    """
    url, scratch, description = stack.enter_context(resolve_database())
    print(f"database: {description}")
    print(f"run id:   {run_id}  (seeded user ids start with loadtest-{run_id}-)")
    server = environment.probe_server(loop_safe_url(url))
    rtt = server["rtt_ms"]
    print(
        f"round trip to the server: p50 {rtt['p50']:.3f} ms, min {rtt['min']:.3f} ms "
        f"(SELECT 1 x {rtt['samples']}; latency up to this is the network's, not storage's)"
    )
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
    if fail_after_seed := os.environ.get("LOADTEST_FAIL_AFTER_SEED"):
        # Test hook: a step failing after rows were written (the cleanup must still run).
        raise SetupError(f"LOADTEST_FAIL_AFTER_SEED={fail_after_seed}")
    injected = inject_delays(url, os.environ.get(INJECT_DELAY_ENV, ""))
    if injected:
        stack.callback(_remove_delays, url, injected)
        print(f"injected server-side delay ({INJECT_DELAY_ENV}): {injected}")
    env = dict(os.environ, LOADTEST_DATABASE_URL=loop_safe_url(url), PYTHONPATH=_pythonpath())
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server["injected_delay_ms"] = injected
    return Prepared(url, scratch, description, run_id, plan, counts, server, env)


def measure(
    stack: contextlib.ExitStack, args: argparse.Namespace, prepared: Prepared, out: Path
) -> Measurement:
    """Run Locust once on the prepared database; its measured window.

    Raises:
        SetupError: Locust stopped before its warm-up ended.
    """
    samples_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loadtest-")))
    env = dict(prepared.env)
    if args.processes > 1:
        multiproc = stack.enter_context(tempfile.TemporaryDirectory(prefix="loadtest-prom-"))
        env["PROMETHEUS_MULTIPROC_DIR"] = multiproc
    # Workers without a DATABASE_URL of their own use the master's scratch database.
    forwarded = env["LOADTEST_DATABASE_URL"] if prepared.scratch else None
    cmd = locust_command(
        args, out, samples_dir, prepared.run_id, prepared.plan.users, database_url=forwarded
    )
    wait = args.expect_workers_max_wait if getattr(args, "master", False) else 0.0
    cpu_before = environment.children_cpu_seconds()
    code = run_locust(cmd, env, out / "locust.log", args.warmup + args.duration + wait)
    client_cpu = environment.children_cpu_seconds() - cpu_before
    phases = _phases(samples_dir)
    if "reset_at" not in phases:
        raise SetupError(
            f"Locust exited ({code}) before the warm-up ended; see {out / 'locust.log'}"
        )
    start, end = phases["reset_at"], phases.get("stopped_at")
    samples = report.read_samples(samples_dir, start, end)
    workers_path = samples_dir / "workers.json"
    workers: dict[str, list[str]] = (
        json.loads(workers_path.read_text()) if workers_path.exists() else {}
    )
    workers = {k: workers[k] for k in sorted(workers, key=int)}
    measured = (end if end is not None else (samples[-1].t if samples else start)) - start
    return Measurement(
        samples, start, end, measured, _task_errors(out / "locust_exceptions.csv"), code,
        workers, client_cpu,
    )  # fmt: skip


def settings_of(args: argparse.Namespace, prepared: Prepared) -> dict[str, Any]:
    """The settings two runs must share to be compared (``compare`` checks them)."""
    return {
        "users": args.users,
        "mode": args.mode,
        "rate": args.rate if args.mode == "paced" else None,
        "think_s": [args.think_min, args.think_max] if args.mode == "think" else None,
        "reply_delay_s": args.reply_delay,
        "weights": args.weights,
        "driver": args.driver,
        "pool": [args.pool_size, args.max_overflow],
        "seed": {
            "users": prepared.plan.users,
            "conversations": prepared.plan.conversations,
            "messages": prepared.plan.messages,
            "max_history": prepared.plan.max_history,
        },
        "targets_p95_ms": targets_from(args),
        "database_kind": (
            f"{'scratch' if prepared.scratch else 'DATABASE_URL'}, "
            f"PostgreSQL {prepared.server['server_version'].split('.')[0]}"
        ),
    }


def run_context(args: argparse.Namespace, prepared: Prepared) -> dict[str, Any]:
    """What a reader needs to place the run: machine, versions, server, round trip."""
    return {
        "machine": environment.machine(),
        "package_version": environment.package_version(),
        "commit": environment.commit(),
        "server_version": prepared.server["server_version"],
        "max_connections": prepared.server["max_connections"],
        "rtt_ms": prepared.server["rtt_ms"],
        "injected_delay_ms": prepared.server.get("injected_delay_ms") or {},
        "warmup_s": args.warmup,
        "processes": args.processes,
        "workers": args.expect_workers if getattr(args, "master", False) else None,
    }


def run(args: argparse.Namespace) -> int:
    """The ``run`` command; its exit status.

    Raises:
        SetupError: the run could not be made (exit status 2).
    """
    check_run_arguments(args)
    if getattr(args, "worker", False):
        return run_worker(args)
    started_at, run_id = new_run_id()
    out = report_dir(args.reports_dir, started_at, run_id)
    targets = targets_from(args)
    drivers = {"store": [STORE], "raw": [RAW], "both": [STORE, RAW]}[args.driver]
    plan = SeedPlan.scaled(
        args.messages,
        users=args.seed_users,
        conversations=args.conversations,
        max_history=args.max_history,
        min_users=args.users,
    )
    with interruptible(), contextlib.ExitStack() as stack:
        print(f"reports:  {out}")
        prepared = prepare_run(stack, args, run_id, plan)
        if args.metrics_port:
            print(f"metrics:  http://127.0.0.1:{args.metrics_port}/metrics (while Locust runs)")
        where = (
            f"master for {args.expect_workers} worker(s) on port {args.master_port}"
            if args.master
            else f"{args.processes} process(es)"
        )
        print(
            f"locust:   {args.users} users ({args.driver}), spawn {args.spawn_rate:g}/s, "
            f"mode {args.mode}, {where}, warm-up {args.warmup:g}s, measured {args.duration:g}s"
        )
        m = measure(stack, args, prepared, out)
        rows = report.summarize(m.samples, targets, drivers)
        verdict = report.verdict(rows) if m.task_errors == 0 else "fail"
        summary: dict[str, Any] = {
            "kind": "run",
            "operations": [row.as_json() for row in rows],
            "users": args.users,
            "duration_s": round(m.measured_s, 2),
            "warmup_s": args.warmup,
            "mode": args.mode,
            "driver": args.driver,
            "processes": args.processes,
            "seed": prepared.counts,
            "task_errors": m.task_errors,
            "throughput_ops_s": round(len(m.samples) / m.measured_s, 1) if m.measured_s else 0,
            "verdict": verdict,
            "database": prepared.description,
            "started_at": started_at.isoformat(),
            "run_id": run_id,
            "settings": settings_of(args, prepared),
            "environment": run_context(args, prepared),
        }
        if m.workers:
            summary["workers"] = {
                k: {
                    "requests": sum(1 for s in m.samples if s.source == f"w{k}"),
                    "seeded_users": len(v),
                }
                for k, v in m.workers.items()
            }
            summary["seeded_users_shared_by_workers"] = _shared(m.workers)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        report.write_samples(m.samples, m.start, out / report.SAMPLES_FILE)
        title = f"{args.users} users, {args.mode}, {args.driver}: p50/p95/p99 per interval"
        report.chart(
            m.samples, m.start, targets, out / "latency.png", drivers,
            interval=args.chart_interval, title=title,
        )  # fmt: skip
        html.write_run_report(out, summary, ["latency.png"])
        print()
        print(report.terminal_summary(rows, summary, out))
        return 0 if verdict == "pass" else 1


def _shared(workers: dict[str, list[str]]) -> int:
    """How many seeded users more than one worker used (0: a clean split)."""
    seen: dict[str, int] = {}
    for users in workers.values():
        for user in set(users):
            seen[user] = seen.get(user, 0) + 1
    return sum(1 for n in seen.values() if n > 1)


def run_worker(args: argparse.Namespace) -> int:
    """``run --worker``: one Locust worker for the master at ``--master-host``.

    It writes nothing itself: its samples go to the master. The database is
    ``DATABASE_URL`` (the master's), else the one the master forwards (its
    scratch database, reachable only on the master's machine).
    """
    env = dict(os.environ, PYTHONPATH=_pythonpath())
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if url := os.environ.get("DATABASE_URL"):
        env["LOADTEST_DATABASE_URL"] = loop_safe_url(url)
    print(f"locust worker for {args.master_host}:{args.master_port}", flush=True)
    with interruptible():
        return subprocess.call(worker_command(args), env=env, cwd=ROOT)


#: ``operation:ms[,operation:ms]``: server-side delay added to an operation
#: for a run (a deliberately slowed build, to prove ``compare``). A trigger in
#: the run's database sleeps on each row the operation writes; it is dropped
#: at the end of the run.
INJECT_DELAY_ENV = "LOADTEST_INJECT_DELAY_MS"
_DELAY_TRIGGERS = {
    ADD_MESSAGE: ("messages", "BEFORE INSERT"),
    CREATE_CONVERSATION: ("conversations", "BEFORE INSERT"),
    ARCHIVE_CONVERSATION: ("conversations", "BEFORE UPDATE"),
}


def parse_delays(text: str) -> dict[str, float]:
    """``add_message:5`` -> {"add_message": 5.0}.

    Raises:
        SetupError: an operation no trigger can slow, or a bad number.
    """
    delays: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, ms = part.partition(":")
        if name not in _DELAY_TRIGGERS:
            raise SetupError(
                f"{INJECT_DELAY_ENV}: {name!r} cannot be slowed by a trigger "
                f"(one of {', '.join(_DELAY_TRIGGERS)})"
            )
        try:
            delays[name] = float(ms)
        except ValueError:
            raise SetupError(f"{INJECT_DELAY_ENV}: {part!r} is not operation:ms") from None
    return delays


def inject_delays(url: str, text: str) -> dict[str, float]:
    """Install the delay triggers ``text`` asks for; what was installed.

    Raises:
        SetupError: ``text`` is malformed.
    """
    delays = parse_delays(text)

    async def install() -> None:
        conn = await asyncpg.connect(url)
        try:
            for name, ms in delays.items():
                table, when = _DELAY_TRIGGERS[name]
                await conn.execute(
                    f"CREATE FUNCTION loadtest_delay_{name}() RETURNS trigger "
                    f"LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep({ms / 1000:.6f}); "
                    f"RETURN NEW; END $$;"
                    f"CREATE TRIGGER loadtest_delay_{name} {when} ON {table} "
                    f"FOR EACH ROW EXECUTE FUNCTION loadtest_delay_{name}()"
                )
        finally:
            await conn.close()

    if delays:
        asyncio.run(install())
    return delays


def _remove_delays(url: str, delays: dict[str, float]) -> None:
    async def remove() -> None:
        conn = await asyncpg.connect(url)
        try:
            for name in delays:
                table, _ = _DELAY_TRIGGERS[name]
                await conn.execute(
                    f"DROP TRIGGER IF EXISTS loadtest_delay_{name} ON {table};"
                    f"DROP FUNCTION IF EXISTS loadtest_delay_{name}()"
                )
        finally:
            await conn.close()

    asyncio.run(remove())


def honesty(args: argparse.Namespace) -> int:
    """Alternate Locust and pure-asyncio phases on one seeded database; compare p95s.

    Raises:
        SetupError: the run could not be made (exit status 2).
    """
    from loadtests.harness.honesty import run_pure

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
        locust_parser = argparse.ArgumentParser()
        add_run_arguments(locust_parser)
        locust_args = locust_parser.parse_args(
            ["--users", str(args.users), "--spawn-rate", str(args.users),
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
    by_harness = {r.name: r for r in report.summarize(harness, none, [STORE])}
    by_pure = {r.name: r for r in report.summarize(pure, none, [STORE])}
    judged = REQUIRED
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
