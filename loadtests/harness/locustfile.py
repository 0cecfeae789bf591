# Locust's event hooks and prometheus-client's multiprocess collector are untyped.
# mypy: disable-error-code="untyped-decorator,no-untyped-call"
"""Locust users that behave like chat clients, through ChatStore or raw asyncpg.

Run through ``python -m loadtests run`` (which migrates, seeds, picks the
options and writes the report), or by hand against an already seeded database::

    LOADTEST_DATABASE_URL=postgresql://u@127.0.0.1:5432/db \\
      locust -f loadtests/harness/locustfile.py --headless -u 100 -r 50 -t 100s \\
      --chat-run-id <runid> --chat-seed-users 200 --chat-warmup 10 --chat-duration 60 \\
      StoreChatUser

Each simulated user owns one seeded user id (``loadtest-<runid>-<n>``, distinct
per Locust user while there are at least as many seeded users as Locust users,
across ``--processes`` workers too) and repeats, picked by weight:

* ``turn``: read the latest 20 messages, append the user's message, (optionally
  wait ``--chat-reply-delay``), append the assistant's reply;
* ``switch``: list its 50 latest active conversations and open one at random;
* ``new``: create a conversation and continue in it;
* ``archive``: archive the current conversation, then create a new one.

Operation names (Locust's "Name" column) are the product's (core/workload.py):
get_history, add_message, create_conversation, list_conversations,
archive_conversation. Request type ``store`` is the ChatStore path, ``raw`` the
asyncpg reference path running the same SQL (core/backends.py).

The measured window: stats are reset ``--chat-warmup`` s after the test starts
and the runner quits ``--chat-duration`` s after that (``-t`` is only a
backstop), so the window is the duration asked for.

Concurrency: one asyncio loop per process in a real thread (bridge.py); the
engine / reference connections are opened inside that loop on first use, so
after Locust forks its ``--processes`` workers. Each request is timed inside the coroutine.

Metrics: the process that owns the loop serves the package's Prometheus metrics
on ``--chat-metrics-port`` (0: off). With ``--processes`` (or master/worker
mode) set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory: workers write
their samples there and the master serves the sum (prometheus-client
multiprocess mode); ``python -m loadtests run`` does this for you.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import gevent
import gevent.lock
from locust import User, events
from locust.runners import MasterRunner, WorkerRunner

from loadtests.core.backends import Backend, RawBackend, StoreBackend
from loadtests.core.pacer import Pacer
from loadtests.core.workload import OPERATIONS, RAW, STORE, seeded_user_id
from loadtests.harness.bridge import AsyncioBridge
from loadtests.harness.client import ChatClient, Outcome, Pause, Script, parse_weights

_bridge = AsyncioBridge()
_backends: dict[str, Backend] = {}
_backends_lock = gevent.lock.Semaphore()
_user_counter = 0
_samples: list[tuple[float, str, str, float, int]] = []
#: The seeded user ids this process's Locust users own (reported to the master).
_user_ids: set[str] = set()


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("chat load test (loadtests/locustfile.py)")
    env = os.environ.get
    group.add_argument("--chat-run-id", default=env("LOADTEST_RUN_ID", ""), help="seed run id")
    group.add_argument("--chat-seed-users", type=int, default=200, help="seeded users")
    group.add_argument(
        "--chat-mode",
        choices=("paced", "stress", "think"),
        default="paced",
        help="paced: --chat-rate tasks/s per user on a fixed schedule; "
        "stress: no wait; think: random wait",
    )
    group.add_argument("--chat-rate", type=float, default=1.0, help="paced: tasks/s per user")
    group.add_argument("--chat-think-min", type=float, default=1.0, help="think: min wait (s)")
    group.add_argument("--chat-think-max", type=float, default=5.0, help="think: max wait (s)")
    group.add_argument("--chat-reply-delay", type=float, default=0.0, help="s before the reply")
    group.add_argument("--chat-weights", default="20,3,2,1", help="turn,switch,new,archive")
    group.add_argument("--chat-pool-size", type=int, default=10, help="pool size per process")
    group.add_argument("--chat-max-overflow", type=int, default=20, help="overflow per process")
    group.add_argument("--chat-worker-count", type=int, default=1, help="worker processes")
    group.add_argument("--chat-warmup", type=float, default=0.0, help="reset stats after (s)")
    group.add_argument(
        "--chat-duration", type=float, default=0.0, help="quit this long after the reset (s; 0: -t)"
    )
    group.add_argument("--chat-samples-dir", default="", help="write every sample here")
    group.add_argument("--chat-metrics-port", type=int, default=0, help="Prometheus port; 0 off")
    group.add_argument(
        "--chat-database-url",
        default="",
        help="database for workers without LOADTEST_DATABASE_URL (the master's scratch one)",
    )


def _options(user: User) -> Any:
    return user.environment.parsed_options


def _database_url(options: Any) -> str:
    url = (
        os.environ.get("LOADTEST_DATABASE_URL")
        or os.environ.get("DATABASE_URL")
        or options.chat_database_url
    )
    if not url:
        raise RuntimeError("set LOADTEST_DATABASE_URL (or DATABASE_URL) for the locustfile")
    return url


def _backend(kind: str, options: Any) -> Backend:
    """This process's backend of ``kind``, opened on first use (after any fork)."""
    with _backends_lock:  # one greenlet opens it; the others wait for it
        backend = _backends.get(kind)
        if backend is None:
            url = _database_url(options)
            if kind == STORE:
                backend = StoreBackend(
                    url,
                    pool_size=options.chat_pool_size,
                    max_overflow=options.chat_max_overflow,
                    metrics=_bridge.call(_store_metrics),
                )
            else:
                backend = RawBackend(
                    url, connections=options.chat_pool_size + options.chat_max_overflow
                )
            _bridge.call(backend.open)
            _backends[kind] = backend
        return backend


# -- the simulated chat client ---------------------------------------------------------


class _ChatUser(User):
    abstract = True
    request_type = STORE

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        global _user_counter
        options = environment.parsed_options
        runner = environment.runner
        worker = runner.worker_index if isinstance(runner, WorkerRunner) else 0
        workers = max(1, options.chat_worker_count)
        index = _user_counter * workers + worker
        _user_counter += 1
        self.rng = random.Random(index)
        self._pacer: Pacer | None = None
        user_id = seeded_user_id(options.chat_run_id, index % options.chat_seed_users)
        _user_ids.add(user_id)
        self.client = ChatClient(
            _backend(self.request_type, options),
            user_id,
            self.rng,
            weights=parse_weights(options.chat_weights),
            reply_delay=options.chat_reply_delay,
        )

    def wait_time(self) -> float:
        options = _options(self)
        if options.chat_mode == "stress":
            return 0.0
        if options.chat_mode == "think":
            return self.rng.uniform(options.chat_think_min, options.chat_think_max)
        return self._pacer.wait() if self._pacer is not None else 0.0

    def _drive(self, script: Script) -> None:
        """Run a client script: each operation on the loop, timed inside the coroutine."""
        outcome: Outcome | None = None
        while True:
            try:
                step = script.send(outcome)
            except StopIteration:
                return
            if isinstance(step, Pause):
                gevent.sleep(step.seconds)
                outcome = None
                continue
            value, ms, exc = _bridge.timed(step.call)
            events.request.fire(
                request_type=self.request_type,
                name=step.name,
                response_time=ms,
                response_length=0,
                exception=exc,
                context={},
            )
            outcome = (value, exc)

    def on_start(self) -> None:
        # Each user's schedule starts at its own random phase (core/pacer.py).
        options = _options(self)
        if options.chat_mode == "paced" and options.chat_rate > 0:
            self._pacer = Pacer(options.chat_rate, self.rng)
            gevent.sleep(self._pacer.wait())
        elif options.chat_mode == "think":
            gevent.sleep(self.rng.uniform(0, options.chat_think_max))
        self._drive(self.client.start())

    def step(self) -> None:
        """One task of the client's weighted mix (turn, switch, new, archive)."""
        self._drive(self.client.next_task())

    tasks = [step]  # noqa: RUF012 (Locust reads this class attribute)


class StoreChatUser(_ChatUser):
    """A chat client going through chat_storage.ChatStore (request type ``store``)."""

    request_type = STORE


class RawChatUser(_ChatUser):
    """The same client on raw asyncpg with the same SQL (request type ``raw``)."""

    request_type = RAW


assert len(OPERATIONS) == 5


# -- metrics, warm-up, samples ---------------------------------------------------------

_registry: Any = None


def _metrics_registry() -> Any:
    """The registry StoreMetrics registers on in this process."""
    global _registry
    if _registry is None:
        from prometheus_client import REGISTRY, CollectorRegistry

        # Multiprocess mode: the default registry writes to PROMETHEUS_MULTIPROC_DIR.
        _registry = REGISTRY if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else CollectorRegistry()
    return _registry


async def _store_metrics() -> Any:
    """StoreMetrics on this process's registry, made in the loop's thread, which
    is where the store will observe them."""
    from chat_storage import StoreMetrics

    return StoreMetrics(_metrics_registry())


def _serve_metrics(environment: Any) -> None:
    port = environment.parsed_options.chat_metrics_port
    if not port or isinstance(environment.runner, WorkerRunner):
        return
    from prometheus_client import CollectorRegistry, start_http_server

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = _metrics_registry()
    try:
        start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as exc:
        print(f"metrics: cannot listen on 127.0.0.1:{port}: {exc}", flush=True)


def _write_phase(environment: Any, key: str, overwrite: bool = True) -> None:
    directory = environment.parsed_options.chat_samples_dir
    if not directory:
        return
    path = Path(directory) / "phases.json"
    phases = json.loads(path.read_text()) if path.exists() else {}
    if key in phases and not overwrite:
        return
    phases[key] = time.time()
    path.write_text(json.dumps(phases))


def _flush_samples(environment: Any) -> None:
    """Hand this process's new samples on: to a file in ``--chat-samples-dir``, or,
    on a Locust worker, to the master (which may be on another machine) as a
    ``chat_samples`` message, so the master's directory holds every request."""
    if not _samples:
        return
    rows = _samples[:]
    del _samples[: len(rows)]
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.send_message("chat_samples", {"rows": rows, "users": sorted(_user_ids)})
        return
    directory = environment.parsed_options.chat_samples_dir
    if directory:
        _write_samples(Path(directory), "local", rows)


def _write_samples(directory: Path, source: str, rows: Any) -> None:
    with open(directory / f"samples-{source}.csv", "a") as out:
        out.writelines(
            f"{t:.6f},{kind},{name},{ms:.4f},{failed}\n" for t, kind, name, ms, failed in rows
        )


def _on_worker_samples(environment: Any, msg: Any, **_: Any) -> None:
    """Master: one worker's samples, written under its worker index; its seeded users."""
    directory = environment.parsed_options.chat_samples_dir
    if not directory:
        return
    index = environment.runner.get_worker_index(msg.node_id)
    _write_samples(Path(directory), f"w{index}", msg.data["rows"])
    path = Path(directory) / "workers.json"
    workers = json.loads(path.read_text()) if path.exists() else {}
    workers[str(index)] = msg.data["users"]
    path.write_text(json.dumps(workers))


def _on_flush_request(environment: Any, **_: Any) -> None:
    """Worker: send what is left now, then say so (the master quits after every answer)."""
    _flush_samples(environment)
    environment.runner.send_message("chat_flushed", {"users": sorted(_user_ids)})


_tracer_provider: Any = None


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    global _tracer_provider
    runner = environment.runner
    options = environment.parsed_options
    if options is None:
        return
    _serve_metrics(environment)
    if not isinstance(runner, MasterRunner):
        # Spans of this process's ChatStore operations, when OTEL_TRACES_EXPORTER
        # asks for them (the stores use the global provider).
        from loadtests.harness.telemetry import configure_tracing

        _tracer_provider = configure_tracing()
    if isinstance(runner, WorkerRunner):
        runner.register_message(
            "chat_reset_stats", lambda *_a, **_k: environment.runner.stats.reset_all()
        )
        runner.register_message("chat_flush", lambda *_a, **_k: _on_flush_request(environment))
    if isinstance(runner, MasterRunner):
        runner.register_message("chat_samples", _on_worker_samples)
        runner.register_message("chat_flushed", _on_worker_flushed)
    elif options.chat_samples_dir or isinstance(runner, WorkerRunner):
        # A worker learns the master's options only when the test starts, so it
        # records always and sends to the master; a lone process needs the directory.

        @environment.events.request.add_listener
        def _record(
            request_type: str, name: str, response_time: float, exception: Any, **_: Any
        ) -> None:
            _samples.append(
                (time.time(), request_type, name, response_time, int(exception is not None))
            )

        def flusher() -> None:
            while True:
                gevent.sleep(1.0)
                _flush_samples(environment)

        gevent.spawn(flusher)


_flushed: set[str] = set()


def _on_worker_flushed(environment: Any, msg: Any, **_: Any) -> None:
    _flushed.add(msg.node_id)


def _finish(environment: Any) -> None:
    """End of the measured window: a master first collects every worker's last
    samples (bounded wait), then quits."""
    runner = environment.runner
    _write_phase(environment, "stopped_at")
    if isinstance(runner, MasterRunner):
        expected = {client.id for client in runner.clients.values()}
        runner.send_message("chat_flush")
        deadline = time.monotonic() + FLUSH_TIMEOUT
        while not expected <= _flushed and time.monotonic() < deadline:
            gevent.sleep(0.1)
    runner.quit()


#: Seconds a master waits at the end for its workers' last samples.
FLUSH_TIMEOUT = 10.0


def _warm_backends(environment: Any) -> None:
    """Open this process's pools before its users start, so that building the
    engine and connecting are not inside the first measured operations."""
    options = environment.parsed_options
    kinds = {getattr(cls, "request_type", None) for cls in environment.user_classes}
    for kind in sorted(k for k in kinds if k in (STORE, RAW)):
        _backend(kind, options)


@events.test_start.add_listener
def _on_test_start(environment: Any, **_: Any) -> None:
    runner = environment.runner
    if not isinstance(runner, MasterRunner) and environment.parsed_options is not None:
        _warm_backends(environment)
    if isinstance(runner, WorkerRunner):
        return
    _write_phase(environment, "started_at")
    warmup = environment.parsed_options.chat_warmup
    duration = environment.parsed_options.chat_duration

    def reset() -> None:
        runner.stats.reset_all()
        if isinstance(runner, MasterRunner):
            runner.send_message("chat_reset_stats")
        _write_phase(environment, "reset_at")
        if duration > 0:
            # The measured window is the duration asked for: -t counts from
            # Locust's start, before the pools opened and the warm-up ran.
            gevent.spawn_later(duration, _finish, environment)

    if warmup > 0:
        gevent.spawn_later(warmup, reset)
    else:
        reset()


@events.test_stop.add_listener
def _on_test_stop(environment: Any, **_: Any) -> None:
    if not isinstance(environment.runner, WorkerRunner):
        # _finish wrote the end of the measured window before collecting the
        # workers' last samples; a stop before it (or by hand) writes it here.
        _write_phase(environment, "stopped_at", overwrite=False)
    if not isinstance(environment.runner, MasterRunner):
        _flush_samples(environment)


@events.quitting.add_listener
def _on_quitting(environment: Any, **_: Any) -> None:
    if environment.parsed_options is not None:
        _flush_samples(environment)
    for backend in list(_backends.values()):
        try:
            _bridge.call(backend.close)
        except Exception as exc:
            print(f"closing the {backend.name} backend: {exc!r}", flush=True)
    _backends.clear()
    if _tracer_provider is not None:
        _tracer_provider.shutdown()  # flushes the batch processors
