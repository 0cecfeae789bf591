"""``python -m loadtests capacity``: raise the offered load step by step, find the knee.

One database is migrated and seeded once (as many seeded users as the last
step has sessions); then each step is one Locust run of ``--step-warmup`` +
``--step-duration`` seconds at the step's sessions (``--steps``), each session
paced at ``--rate`` tasks per second, so the offered load is sessions x rate.
The run stops by itself at the first step where

* a p95 target is missed (or a required operation has no sample),
* a request fails or a task raises, or
* the offered load is no longer served: operations per session-task fell below
  ``--served-fraction`` of the first step's (late tasks pile up instead of running),

and also after ``--max-steps`` steps or when the next step would end after
``--max-minutes``. The knee is the highest step at which every target held.

During each step the harness samples, every half second, the pool's connections
in use and its wait (the package's Prometheus metrics, served by Locust's
process), and the database's connections (``pg_stat_activity``); it reads the
Locust process's CPU (its rusage) and, when the server runs on this machine,
the server's CPU (``/proc``). "What ran out first" is, at the first step that
did not hold, the resource nearest its limit: client CPU (one core per Locust
process: gevent and the asyncio loop share one interpreter), database CPU
(the machine's cores), pool connections (pool_size + max_overflow), database
connections (max_connections less the reserved ones).

Writes ``reports/capacity-<UTC time>/``: ``summary.json`` (every step, the
knee, what ran out first), ``capacity.png`` (p95 per operation against offered
load, targets drawn), ``report.html``, and each step's Locust files under
``step-<n>/``. Exit status: 0 a knee was found, 1 the first step already
missed, 2 the run could not be made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
import time
import urllib.request
from html import escape
from pathlib import Path
from typing import Any

import asyncpg

from loadtests.core.database import SetupError, loop_safe_url
from loadtests.core.options import at_least, port, positive
from loadtests.core.seed import SeedPlan
from loadtests.core.workload import OPERATIONS, STORE
from loadtests.harness import environment, html, report, run

ROOT = Path(__file__).resolve().parents[2]


def _steps(text: str) -> list[int]:
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like 25,50,100, got {text!r}"
        ) from None
    if not steps or any(n < 1 for n in steps) or steps != sorted(set(steps)):
        raise argparse.ArgumentTypeError(f"expected rising positive integers, got {text!r}")
    return steps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``capacity``'s options."""
    g = parser.add_argument_group("steps")
    g.add_argument(
        "--steps", type=_steps, default=[50, 100, 200, 400, 800, 1600, 3200],
        help="sessions per step (50,100,200,400,800,1600,3200)",
    )  # fmt: skip
    g.add_argument("--rate", type=positive, default=1.0, help="tasks/s per session (1)")
    g.add_argument("--step-duration", type=positive, default=15.0, help="measured s/step (15)")
    g.add_argument("--step-warmup", type=at_least(0.0), default=3.0, help="warm-up s/step (3)")
    g.add_argument("--max-steps", type=at_least(1), default=8, help="at most this many steps (8)")
    g.add_argument(
        "--max-minutes", type=positive, default=10.0, help="stop before passing this (10)"
    )
    g.add_argument(
        "--served-fraction", type=positive, default=0.9,
        help="offered load counts as served above this share of the first step's (0.9)",
    )  # fmt: skip
    g.add_argument("--weights", default="20,3,2,1", help="turn,switch,new,archive (20,3,2,1)")
    g.add_argument("--pool-size", type=at_least(1), default=10, help="pool size (10)")
    g.add_argument("--max-overflow", type=at_least(0), default=20, help="pool overflow (20)")
    g.add_argument("--messages", type=at_least(0), default=20_000, help="seeded messages (20000)")
    g.add_argument("--keep-data", action="store_true", help="keep seeded rows (DATABASE_URL)")
    t = parser.add_argument_group("targets (p95, ms; 0 = none)")
    t.add_argument("--target-history-ms", type=at_least(0.0), default=100.0, help="(100)")
    t.add_argument("--target-insert-ms", type=at_least(0.0), default=50.0, help="(50)")
    t.add_argument("--target-other-ms", type=at_least(0.0), default=100.0, help="(100)")
    o = parser.add_argument_group("output")
    o.add_argument("--reports-dir", default=str(ROOT / "reports"), help="(reports/)")
    o.add_argument("--metrics-port", type=port, default=9465, help="pool metrics read here (9465)")


def step_args(args: argparse.Namespace, users: int, seeded: int) -> argparse.Namespace:
    """The ``run`` options of one step."""
    parser = argparse.ArgumentParser()
    run.add_run_arguments(parser)
    return parser.parse_args(
        ["--users", str(users), "--spawn-rate", str(max(50, users)),
         "--warmup", str(args.step_warmup), "--duration", str(args.step_duration),
         "--rate", str(args.rate), "--weights", args.weights, "--mode", "paced",
         "--pool-size", str(args.pool_size), "--max-overflow", str(args.max_overflow),
         "--seed-users", str(seeded), "--metrics-port", str(args.metrics_port),
         "--target-history-ms", str(args.target_history_ms),
         "--target-insert-ms", str(args.target_insert_ms),
         "--target-other-ms", str(args.target_other_ms)]
    )  # fmt: skip


class ResourceSampler:
    """Samples pool and database connections every half second in a thread."""

    def __init__(self, url: str, metrics_port: int) -> None:
        self.url = url
        self.metrics_port = metrics_port
        self.max_checked_out = 0.0
        self.max_db_connections = 0
        self.wait_sum = 0.0
        self.wait_count = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._loop()), daemon=True)

    def __enter__(self) -> ResourceSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _scrape(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=0.5) as response:
                text = response.read().decode()
        except OSError:
            return  # Locust not up yet, or already gone
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (
                    sample.name == "chat_storage_pool_connections"
                    and sample.labels.get("state") == "checked_out"
                ):
                    self.max_checked_out = max(self.max_checked_out, sample.value)
                elif sample.name == "chat_storage_pool_wait_seconds_sum":
                    self.wait_sum = sample.value
                elif sample.name == "chat_storage_pool_wait_seconds_count":
                    self.wait_count = sample.value

    async def _loop(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            while not self._stop.is_set():
                n = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                )
                self.max_db_connections = max(self.max_db_connections, int(n))
                if self.metrics_port:
                    await asyncio.to_thread(self._scrape)
                await asyncio.sleep(0.5)
        finally:
            await conn.close()


def ran_out(step: dict[str, Any]) -> tuple[str, float]:
    """The resource nearest its limit at ``step``: (name, share of the limit)."""
    shares = {k: v for k, v in step["resources"].items() if v is not None}
    name = max(shares, key=lambda k: shares[k])
    return name, shares[name]


def measure_step(
    args: argparse.Namespace,
    prepared: run.Prepared,
    users: int,
    out: Path,
    server_cpu: environment.ServerCpu,
) -> dict[str, Any]:
    """One step: Locust at ``users`` sessions; its figures."""
    sargs = step_args(args, users, prepared.plan.users)
    targets = run.targets_from(sargs)
    out.mkdir()
    with contextlib.ExitStack() as stack:
        db_before = server_cpu.seconds()
        wall = time.monotonic()
        with ResourceSampler(loop_safe_url(prepared.url), args.metrics_port) as sampler:
            m = run.measure(stack, sargs, prepared, out)
        wall = time.monotonic() - wall
        db_after = server_cpu.seconds()
    rows = report.summarize(m.samples, targets, [STORE])
    ops_s = len(m.samples) / m.measured_s if m.measured_s else 0.0
    cpus = environment.machine()["cpus"] or 1
    db_cores = None if db_before is None or db_after is None else (db_after - db_before) / wall
    pool_limit = args.pool_size + args.max_overflow
    return {
        "users": users,
        "offered_tasks_s": round(users * args.rate, 2),
        "ops_s": round(ops_s, 1),
        "ops_per_task": round(ops_s / (users * args.rate), 3),
        "operations": [r.as_json() for r in rows],
        "failures": sum(r.failures for r in rows),
        "task_errors": m.task_errors,
        "targets_met": report.verdict(rows) == report.PASS,
        "client_cpu_cores": round(m.client_cpu_s / wall, 3),
        "database_cpu_cores": None if db_cores is None else round(db_cores, 3),
        "pool_in_use_max": sampler.max_checked_out,
        "pool_wait_mean_ms": (
            round(1000 * sampler.wait_sum / sampler.wait_count, 3) if sampler.wait_count else None
        ),
        "database_connections_max": sampler.max_db_connections,
        "resources": {
            "client CPU": round(m.client_cpu_s / wall, 3),
            "database CPU": None if db_cores is None else round(db_cores / cpus, 3),
            "pool connections": round(sampler.max_checked_out / pool_limit, 3),
            "database connections": round(
                sampler.max_db_connections / prepared.server["usable_connections"], 3
            ),
        },
    }


def judge(step: dict[str, Any], first: dict[str, Any] | None, served_fraction: float) -> str:
    """Why a step did not hold ("" when it held)."""
    if step["failures"] or step["task_errors"]:
        return f"{step['failures']} failed requests, {step['task_errors']} task errors"
    if not step["targets_met"]:
        missed = [
            f"{op['name']} p95 {op['p95_ms']} ms > {op['target_p95_ms']}"
            for op in step["operations"]
            if op["pass"] is False
        ]
        return "target missed: " + ", ".join(missed)
    if first is not None and step["ops_per_task"] < served_fraction * first["ops_per_task"]:
        return (
            f"offered load not served: {step['ops_per_task']} operations per task offered, "
            f"first step {first['ops_per_task']}"
        )
    return ""


def chart(steps: list[dict[str, Any]], targets: dict[str, float | None], path: Path) -> Path:
    """p95 per operation against offered load (log ms), targets dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    colors = dict(zip(OPERATIONS, ("tab:blue", "tab:orange", "tab:green", "tab:purple",
                                   "tab:brown"), strict=True))  # fmt: skip
    xs = [s["offered_tasks_s"] for s in steps]
    for name in OPERATIONS:
        ys = [next(op["p95_ms"] for op in s["operations"] if op["name"] == name) for s in steps]
        ax.plot(xs, [float("nan") if y is None else y for y in ys], "o-", color=colors[name],
                label=name)  # fmt: skip
        target = targets.get(name)
        if target is not None:
            ax.axhline(target, color=colors[name], linestyle="--", linewidth=0.8)
    for s in steps:
        if s.get("held") is False:
            ax.axvline(s["offered_tasks_s"], color="red", alpha=0.3, linewidth=6)
    ax.set_xscale("log")
    report.log_scale(ax)
    ax.set_xlabel("offered load, tasks/s (sessions x rate; log); red: did not hold")
    ax.set_title("p95 per operation against offered load; dashed: targets")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_steps(steps: list[dict[str, Any]]) -> str:
    """The terminal table: one line per step."""
    header = ("users", "tasks/s", "ops/s", "p95 hist", "p95 add", "p99 hist", "p99 add",
              "cli CPU", "db CPU", "pool max", "wait ms", "db conn", "held")  # fmt: skip
    lines = [header]
    for s in steps:
        ops = {op["name"]: op for op in s["operations"]}

        def f(v: Any) -> str:
            return "-" if v is None else f"{v:g}"

        lines.append(
            (str(s["users"]), f(s["offered_tasks_s"]), f(s["ops_s"]),
             f(ops["get_history"]["p95_ms"]), f(ops["add_message"]["p95_ms"]),
             f(ops["get_history"]["p99_ms"]), f(ops["add_message"]["p99_ms"]),
             f(s["client_cpu_cores"]), f(s["database_cpu_cores"]), f(s["pool_in_use_max"]),
             f(s["pool_wait_mean_ms"]), str(s["database_connections_max"]),
             "yes" if s["held"] else "NO")
        )  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    out.insert(1, "-" * len(out[0]))
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    """The ``capacity`` command; its exit status.

    Raises:
        SetupError: the run could not be made (exit status 2).
    """
    started_at, run_id = run.new_run_id()
    out = run.report_dir(args.reports_dir, started_at, run_id, "-capacity")
    deadline = time.monotonic() + 60 * args.max_minutes
    plan = SeedPlan.scaled(args.messages, min_users=max(args.steps))
    steps: list[dict[str, Any]] = []
    stopped = ""
    with run.interruptible(), contextlib.ExitStack() as stack:
        print(f"reports:  {out}")
        prepared = run.prepare_run(stack, args, run_id, plan)
        server_cpu = environment.ServerCpu(prepared.server["postmaster_pid"])
        per_step = args.step_warmup + args.step_duration + 10  # Locust start and stop
        for n, users in enumerate(args.steps[: args.max_steps], start=1):
            if time.monotonic() + per_step > deadline:
                stopped = f"--max-minutes {args.max_minutes:g} reached"
                break
            print(f"step {n}: {users} sessions x {args.rate:g} tasks/s")
            step = measure_step(args, prepared, users, out / f"step-{n}", server_cpu)
            why = judge(step, steps[0] if steps else None, args.served_fraction)
            step["held"] = not why
            step["why_not"] = why or None
            steps.append(step)
            if why:
                stopped = f"step {n} ({users} sessions) did not hold: {why}"
                break
        else:
            stopped = stopped or "every step held (raise --steps to find the knee)"
        sargs = step_args(args, args.steps[0], plan.users)
        held = [s for s in steps if s["held"]]
        knee = held[-1] if held else None
        limit_step = next((s for s in steps if not s["held"]), steps[-1] if steps else None)
        first_out = ran_out(limit_step) if limit_step else ("-", 0.0)
        summary: dict[str, Any] = {
            "kind": "capacity",
            "steps": steps,
            "knee": None
            if knee is None
            else {
                k: knee[k]
                for k in (
                    "users",
                    "offered_tasks_s",
                    "ops_s",
                    "operations",
                    "pool_in_use_max",
                    "pool_wait_mean_ms",
                )
            },
            "stopped": stopped,
            "ran_out_first": {
                "resource": first_out[0],
                "share_of_limit": first_out[1],
                "at_users": limit_step["users"] if limit_step else None,
            },
            "database": prepared.description,
            "started_at": started_at.isoformat(),
            "run_id": run_id,
            "settings": {
                "steps": args.steps,
                "rate": args.rate,
                "weights": args.weights,
                "step_duration_s": args.step_duration,
                "pool": [args.pool_size, args.max_overflow],
                "seed": {
                    "users": plan.users,
                    "conversations": plan.conversations,
                    "messages": plan.messages,
                    "max_history": plan.max_history,
                },
                "targets_p95_ms": run.targets_from(sargs),
                "database_kind": run.settings_of(sargs, prepared)["database_kind"],
            },
            "environment": run.run_context(sargs, prepared),
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if steps:
        chart(steps, run.targets_from(sargs), out / "capacity.png")
    table = format_steps(steps)
    knee_line = (
        "knee: none (the first step did not hold)"
        if knee is None
        else f"knee: {knee['users']} sessions, {knee['offered_tasks_s']:g} tasks/s offered, "
        f"{knee['ops_s']:g} ops/s served, every p95 target held"
    )
    resource_line = (
        f"nearest its limit at {first_out and summary['ran_out_first']['at_users']} sessions: "
        f"{first_out[0]} ({100 * first_out[1]:.0f}% of its limit)"
    )
    print()
    print(table)
    print(f"stopped: {stopped}")
    print(knee_line)
    print(resource_line)
    verdict = "pass" if knee is not None else "fail"
    sections = [
        f"<p>{escape(knee_line)}<br>{escape(resource_line)}<br>stopped: {escape(stopped)}</p>",
        "<pre>" + escape(table) + "</pre>",
        html.image(out / "capacity.png"),
        html.context_section(summary),
    ]
    (out / "report.html").write_text(html.page("Capacity", verdict, sections))
    print(f"report: {out / 'report.html'}")
    if not steps:
        raise SetupError("no step ran (--max-minutes too small for one step)")
    return 0 if knee is not None else 1
