"""StoreMetrics under prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR).

Worker processes (spawned, as gunicorn or Locust workers would be separate
processes) each run a few ChatStore operations with StoreMetrics on the default
registry and hold one pooled connection; the parent aggregates their files with
``MultiProcessCollector``, as a multiprocess ``/metrics`` endpoint does.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from chat_storage import ChatStore, InvalidLimit, StoreMetrics, create_engine
from tests.conftest import MakeUser

WORKERS = 3
STARTUP_TIMEOUT_S = 60.0  # a spawned worker imports SQLAlchemy and asyncpg first


def pool_size(k: int) -> int:
    """Worker k's pool size: different per worker, so a sum is not a multiple of one."""
    return k + 2


def max_overflow(k: int) -> int:
    return k


def appends(k: int) -> int:
    return k + 1


async def run_worker(k: int, database_url: str, user_id: str, ready: Any, release: Any) -> None:
    engine = create_engine(
        database_url=database_url, pool_size=pool_size(k), max_overflow=max_overflow(k)
    )
    # The default registry: in multiprocess mode its values go to this process's files.
    store = ChatStore(engine, metrics=StoreMetrics())
    try:
        conversation = await store.create_conversation(user_id)
        for n in range(appends(k)):
            await store.add_message(user_id, conversation.id, "user", f"m{n}")
        await store.get_history(user_id, conversation.id)
        try:
            await store.get_history(user_id, conversation.id, limit=0)
        except InvalidLimit:
            pass
        async with engine.connect():  # one checkout held until the parent says so
            ready.put(("ready", k, os.getpid()))
            # A pipe, not a multiprocessing.Event: Event.set() waits for every waiter
            # to wake, and a SIGKILLed waiter never does.
            await asyncio.to_thread(release.poll, STARTUP_TIMEOUT_S)
    finally:
        await engine.dispose()


def worker(k: int, database_url: str, user_id: str, ready: Any, release: Any) -> None:
    """Entry point of a spawned worker; reports failures to the parent."""
    try:
        asyncio.run(run_worker(k, database_url, user_id, ready, release))
    except BaseException as exc:
        ready.put(("error", k, repr(exc)))
        raise


def collect(directory: Path) -> CollectorRegistry:
    """What a multiprocess /metrics endpoint would expose right now."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_multiprocess_metrics_sum_counts_and_live_pool_gauges(
    database_url: str,
    make_user: MakeUser,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counts and histograms sum over every process; livesum pool gauges sum the live ones,
    and a dead process's gauges stay until mark_process_dead."""
    users = [await make_user() for _ in range(WORKERS)]
    # Read by prometheus_client when the spawned workers import it.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    pipes = [context.Pipe(duplex=False) for _ in range(WORKERS)]
    processes = [
        context.Process(target=worker, args=(k, database_url, users[k], ready, pipes[k][0]))
        for k in range(WORKERS)
    ]

    def release() -> None:
        for _, sender in pipes:
            if not sender.closed:
                sender.send(None)
                sender.close()

    for process in processes:
        process.start()
    try:
        pids: dict[int, int] = {}
        while len(pids) < WORKERS:
            try:
                kind, k, detail = await asyncio.to_thread(ready.get, timeout=STARTUP_TIMEOUT_S)
            except Empty:
                pytest.fail(f"only {len(pids)} of {WORKERS} workers got ready")
            assert kind == "ready", f"worker {k} failed: {detail}"
            pids[k] = detail

        metrics = collect(tmp_path)
        histogram = "chat_storage_operation_duration_seconds_count"
        assert value(metrics, histogram, operation="create_conversation", outcome="ok") == WORKERS
        assert value(metrics, histogram, operation="add_message", outcome="ok") == sum(
            appends(k) for k in range(WORKERS)
        )
        assert value(metrics, histogram, operation="get_history", outcome="ok") == WORKERS
        rejects = "chat_storage_validation_rejects_total"
        assert value(metrics, rejects, operation="get_history", error_type="InvalidLimit") == (
            WORKERS
        )
        store_checkouts = sum(appends(k) + 2 for k in range(WORKERS))
        assert value(metrics, "chat_storage_pool_wait_seconds_count") == store_checkouts
        # Sequential operations need one connection per process.
        assert value(metrics, "chat_storage_pool_connect_seconds_count") == WORKERS
        # livesum: every live process's own pool, added up.
        sizes = sum(pool_size(k) for k in range(WORKERS))
        assert value(metrics, "chat_storage_pool_size") == sizes
        assert value(metrics, "chat_storage_pool_max_overflow") == sum(
            max_overflow(k) for k in range(WORKERS)
        )
        connections = "chat_storage_pool_connections"
        assert value(metrics, connections, state="checked_out") == WORKERS
        assert value(metrics, connections, state="idle") == 0

        # A worker dies holding its connection (SIGKILL: no cleanup of its own).
        victim = processes[WORKERS - 1]
        os.kill(pids[WORKERS - 1], signal.SIGKILL)
        await asyncio.to_thread(victim.join, 10)
        stale = collect(tmp_path)
        # Nothing tells the collector a process died: its gauges still count.
        assert value(stale, connections, state="checked_out") == WORKERS
        assert value(stale, "chat_storage_pool_size") == sizes
        # What a gunicorn child_exit hook does; then only live pools are summed.
        mark_process_dead(pids[WORKERS - 1], str(tmp_path))  # type: ignore[no-untyped-call]
        after = collect(tmp_path)
        assert value(after, connections, state="checked_out") == WORKERS - 1
        assert value(after, "chat_storage_pool_size") == sizes - pool_size(WORKERS - 1)
        # The dead process's operations happened: counters and histograms keep them.
        assert value(after, histogram, operation="add_message", outcome="ok") == sum(
            appends(k) for k in range(WORKERS)
        )

        release()
        for process in processes[: WORKERS - 1]:
            await asyncio.to_thread(process.join, 30)
            assert process.exitcode == 0
        # Clean exits leave their last values (here: nothing checked out) until marked dead.
        finished = collect(tmp_path)
        assert value(finished, connections, state="checked_out") == 0
        for k in range(WORKERS - 1):
            mark_process_dead(pids[k], str(tmp_path))  # type: ignore[no-untyped-call]
        assert value(collect(tmp_path), "chat_storage_pool_size") is None
    finally:
        release()
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
