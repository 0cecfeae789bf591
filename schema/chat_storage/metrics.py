"""Prometheus metrics for chat operations and the connection pool.

Nothing is registered at import: build a :class:`StoreMetrics` on the registry
you expose (default: the global one) and pass it to ``ChatStore``. Labels come
from small fixed sets (operation names, outcomes, error class names), never
from user ids, conversation ids or text.

Building again never duplicates anything: ``StoreMetrics(registry)`` returns the
object already registered on that registry, and a ChatStore built per request
observes its engine's pool once per StoreMetrics (the pool gauges count each
pool once, its listeners are added once).

In one process the two histograms observed on every operation (its duration,
its wait for a connection) are :class:`~chat_storage.histogram.ShardedHistogram`:
the same exposition as prometheus-client's ``Histogram`` without its two locks
per observation (see histogram.py for the measurement).

Under prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set,
as with gunicorn workers or Locust's ``--processes``) every family is the
library's own: histograms and counters aggregate across processes as usual
and every pool gauge is declared ``livesum``: each process reports its own
pool, the exposition sums the live ones. Exemplars are not kept in
multiprocess mode (a prometheus-client limit).
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Final, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, values
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from .errors import ChatStoreError, InvalidInput
from .histogram import ShardedHistogram
from .pool import max_overflow

__all__ = [
    "LATENCY_BUCKETS",
    "POOL_WAIT_BUCKETS",
    "HotSeries",
    "Observer",
    "StoreMetrics",
    "observe_pool",
]


class Observer(Protocol):
    """One histogram series: prometheus-client's child or a ShardedHistogram's."""

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None: ...


#: Bucket edges in seconds. Exactly 0.05 and 0.1 (the plan's insert and history
#: targets), so the share of requests under target is a bucket ratio, not an
#: interpolation; 1 ms steps below 10 ms, so 2 ms -> 4 ms regressions show.
LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01,
    0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: Waiting for a pooled connection: zero when healthy, up to pool_timeout (30 s) when not.
POOL_WAIT_BUCKETS: Final = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: Opening a connection: loopback in ms, TLS to Neon tens of ms, cold starts seconds.
CONNECT_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


# The StoreMetrics registered on each registry (see StoreMetrics.__new__). Weak
# keys: a registry dropped by its owner (a test's) takes its metrics with it.
_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, StoreMetrics] = (
    weakref.WeakKeyDictionary()
)
_BY_REGISTRY_LOCK: Final = threading.Lock()


class StoreMetrics:
    """The metric families one process exposes for its ChatStores and pools.

    One per registry: ``StoreMetrics(registry)`` on a registry that already has
    them returns that object (the same collectors), as a second registration of
    the same names would fail. ``StoreMetrics(None)`` is a new, unregistered set.
    """

    _initialised: bool = False

    def __new__(cls, registry: CollectorRegistry | None = REGISTRY) -> StoreMetrics:
        """The registry's existing StoreMetrics, or a new one to initialise.

        Raises:
            TypeError: the registry holds a StoreMetrics of another class.
        """
        if registry is None:
            return super().__new__(cls)
        with _BY_REGISTRY_LOCK:
            existing = _BY_REGISTRY.get(registry)
            if existing is None:
                existing = _BY_REGISTRY[registry] = super().__new__(cls)
        if not isinstance(existing, cls):
            raise TypeError(
                f"this registry already has chat_storage metrics from {type(existing).__name__}"
            )
        return existing

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        """Create and register every family on ``registry`` (None: unregistered).

        Raises:
            ValueError: ``registry`` already holds a metric of the same name that
                another library registered.
        """
        with _BY_REGISTRY_LOCK:
            if self._initialised:
                return  # the registry's existing metrics (see __new__)
            try:
                self._register(registry)
            except BaseException:
                if registry is not None:
                    _BY_REGISTRY.pop(registry, None)
                raise
            self._initialised = True

    def _register(self, registry: CollectorRegistry | None) -> None:
        # One process: values in memory, pool gauges read at scrape time, hot
        # histograms without locks. Multiprocess mode: values in shared files.
        self.single_process: bool = values.ValueClass is values.MutexValue
        histogram = ShardedHistogram if self.single_process else Histogram
        self.operation_duration: ShardedHistogram | Histogram = histogram(
            "chat_storage_operation_duration_seconds",
            "Duration of ChatStore operations, from call to result, pool wait included.",
            ["operation", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "chat_storage_errors_total",
            "ChatStore operations that raised, by operation and error class.",
            ["operation", "error_type"],
            registry=registry,
        )
        self.validation_rejects = Counter(
            "chat_storage_validation_rejects_total",
            "Calls refused before reaching the database, by operation and error class.",
            ["operation", "error_type"],
            registry=registry,
        )
        self.idempotent_replays = Counter(
            "chat_storage_idempotent_replays_total",
            "add_message calls that returned an already stored message (same message_id).",
            registry=registry,
        )
        self.pool_size = Gauge(
            "chat_storage_pool_size",
            "Configured pool size (connections kept open).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.pool_max_overflow = Gauge(
            "chat_storage_pool_max_overflow",
            "Configured maximum overflow (connections opened beyond the pool size).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.pool_connections = Gauge(
            "chat_storage_pool_connections",
            "Pooled connections by state: checked_out, idle, overflow.",
            ["state"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.pool_wait: ShardedHistogram | Histogram = histogram(
            "chat_storage_pool_wait_seconds",
            "Time a caller waited to get a connection from the pool (connecting included).",
            buckets=POOL_WAIT_BUCKETS,
            registry=registry,
        )
        self.pool_connect = Histogram(
            "chat_storage_pool_connect_seconds",
            "Time to open a new database connection (TLS and authentication included).",
            buckets=CONNECT_BUCKETS,
            registry=registry,
        )
        self.pool_timeouts = Counter(
            "chat_storage_pool_timeouts_total",
            "Callers that gave up waiting for a connection after pool_timeout.",
            registry=registry,
        )
        self._durations: dict[tuple[str, str], Observer] = {}
        # Every series whose labels are known in advance exists at zero from here on:
        # rate() and increase() count an increment only against an earlier sample,
        # so a series born at its first error would hide that error.
        if isinstance(self.pool_wait, ShardedHistogram):
            self.pool_wait.labels()
        for operation in _operation_names():
            for outcome in ("ok", "error"):
                self.duration(operation, outcome)
            for error in _error_classes():
                self.errors.labels(operation, error.__name__)
                if issubclass(error, InvalidInput):
                    self.validation_rejects.labels(operation, error.__name__)
        # In one process the pool gauges are read from the pools when scraped:
        # exact, and nothing on the checkout path (event listeners setting three
        # gauges on every checkout and checkin were the largest part of the
        # metrics' cost). Multiprocess mode has no scrape-time callbacks (values
        # live in files), so there observe_pool keeps them current by events.
        self._engines: list[weakref.ref[Engine]] = []
        #: Engines observe_pool has attached to (each once, however many stores).
        self._observed: weakref.WeakSet[Engine] = weakref.WeakSet()
        if self.single_process:
            self.pool_size.set_function(lambda: self._pool_total(QueuePool.size))
            self.pool_max_overflow.set_function(lambda: self._pool_total(max_overflow))
            for state, read in (
                ("checked_out", QueuePool.checkedout),
                ("idle", QueuePool.checkedin),
                ("overflow", _overflowing),
            ):
                self.pool_connections.labels(state).set_function(
                    lambda read=read: self._pool_total(read)  # type: ignore[misc]
                )

    def duration(self, operation: str, outcome: str) -> Observer:
        """The ``operation_duration`` series for (operation, outcome).

        A ShardedHistogram's ``labels()`` is already a per-thread dictionary
        lookup. prometheus-client's builds and checks the label tuple under a
        lock on every call (as much as the observation itself), so its children
        are looked up once and kept.
        """
        family = self.operation_duration
        if isinstance(family, ShardedHistogram):
            return family.labels(operation, outcome)
        child = self._durations.get((operation, outcome))
        if child is None:
            child = self._durations[operation, outcome] = family.labels(operation, outcome)
        return child

    def _pool_total(self, read: Callable[[QueuePool], int]) -> float:
        """``read`` summed over the current pools of the engines still alive."""
        total = 0
        live = []
        for ref in self._engines:
            engine = ref()
            if engine is None:
                continue
            live.append(ref)
            pool = engine.pool  # engine.dispose() replaces it: read the current one
            if isinstance(pool, QueuePool):
                total += read(pool)
        self._engines = live
        return float(total)


class HotSeries:
    """The series one thread's operations observe into on every call, found once.

    A ShardedHistogram keeps a series per thread, and finding the calling
    thread's is a thread-local lookup; in a loaded process the two lookups per
    operation cost about 1% of its CPU (the instrumentation benchmark, 10
    sessions). A ChatStore's operations run on its engine's event loop, which
    is one thread, so the store keeps these and compares thread ids instead
    (and builds new ones when it finds itself on another thread).
    """

    __slots__ = ("metrics", "ok_durations", "pool_wait", "thread", "zero_waits")

    def __init__(self, metrics: StoreMetrics) -> None:
        self.thread = threading.get_ident()
        self.metrics = metrics
        wait = metrics.pool_wait
        #: The per-bucket counts of this thread's wait series, whose first bucket
        #: is where a wait of 0 goes: ``zero_waits[0] += 1`` is ``observe(0.0)``
        #: without the call (None for prometheus-client's Histogram: observe(0.0)).
        self.zero_waits: list[int] | None = None
        if isinstance(wait, ShardedHistogram):
            series = wait.labels()
            self.pool_wait: Observer = series
            self.zero_waits = series.zero_counts()
        else:
            self.pool_wait = wait
        #: operation name -> its ``outcome="ok"`` duration series (see :meth:`ok`).
        self.ok_durations: dict[str, Observer] = {}

    def ok(self, operation: str) -> Observer:
        """The ``outcome="ok"`` duration series of ``operation`` (kept for next time)."""
        observer = self.ok_durations.get(operation)
        if observer is None:
            observer = self.ok_durations[operation] = self.metrics.duration(operation, "ok")
        return observer


def _operation_names() -> list[str]:
    """Every operation's name: the statements the query modules' plan functions plan."""
    from . import queries  # here: the query modules import this package's models
    from .queries.base import operation_name

    names = set()
    for name in queries.__all__:
        if name.startswith("plan_"):
            with contextlib.suppress(KeyError):  # a helper that plans no statement of its own
                names.add(operation_name(getattr(queries, name)))
    return sorted(names)


def _error_classes() -> list[type[ChatStoreError]]:
    """ChatStoreError's subclasses, the whole tree (errors.py draws it)."""
    found: list[type[ChatStoreError]] = []
    pending = list(ChatStoreError.__subclasses__())
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return sorted(found, key=lambda cls: cls.__name__)


def _overflowing(pool: QueuePool) -> int:
    return max(0, pool.overflow())


def observe_pool(engine: AsyncEngine, metrics: StoreMetrics) -> None:
    """Feed ``engine``'s pool into the pool gauges and the connect-time histogram.

    In one process the gauges read every observed engine's current pool when
    scraped. In multiprocess mode they are set from the pool's own counters on
    every checkout, checkin, connect and close, and after ``engine.dispose()``.
    Either way they are exact whenever they are scraped. Observing the same
    engine again with the same metrics does nothing.
    """
    sync_engine = engine.sync_engine
    with _BY_REGISTRY_LOCK:
        if sync_engine in metrics._observed:
            return  # a ChatStore per request: the pool is observed already
        metrics._observed.add(sync_engine)
    connect_seconds = metrics.pool_connect

    def before_connect(_dialect: Any, record: Any, _cargs: Any, _cparams: Any) -> None:
        record.info["chat_storage.connect_started"] = time.perf_counter()

    def after_connect(_dbapi_connection: Any, record: Any) -> None:
        started = record.info.pop("chat_storage.connect_started", None)
        if started is not None:
            connect_seconds.observe(time.perf_counter() - started)

    event.listen(sync_engine, "do_connect", before_connect)
    event.listen(sync_engine, "connect", after_connect)
    if metrics.single_process:
        metrics._engines.append(weakref.ref(sync_engine))
        return
    checked_out = metrics.pool_connections.labels("checked_out")
    idle = metrics.pool_connections.labels("idle")
    overflowing = metrics.pool_connections.labels("overflow")

    # The engine's current pool, read at every event: engine.dispose() replaces it
    # (and a captured pool would be reported, disposed, from then on).
    def refresh(*_: Any) -> None:
        pool = sync_engine.pool
        if isinstance(pool, QueuePool):
            checked_out.set(pool.checkedout())
            idle.set(pool.checkedin())
            overflowing.set(max(0, pool.overflow()))

    def after_checkin(*_: Any) -> None:
        # The checkin event fires before the pool takes the connection back, so
        # its counters still show it checked out: report the state it is entering.
        pool = sync_engine.pool
        if isinstance(pool, QueuePool):
            checked_out.set(max(0, pool.checkedout() - 1))
            # A full queue discards overflow (FairAsyncQueuePool: once it has
            # held pool_size idle, without a break, for overflow_idle_timeout).
            keeps = getattr(pool, "keeps_returned", None)
            kept = keeps() if callable(keeps) else pool.checkedin() < pool.size()
            idle.set(pool.checkedin() + (1 if kept else 0))
            overflowing.set(max(0, pool.overflow() - (0 if kept else 1)))

    pool = sync_engine.pool
    size = getattr(pool, "size", None)
    if callable(size):
        metrics.pool_size.set(size())
    if isinstance(pool, QueuePool):
        metrics.pool_max_overflow.set(max_overflow(pool))
    event.listen(sync_engine, "checkin", after_checkin)
    for name in ("connect", "checkout", "close", "invalidate", "soft_invalidate"):
        event.listen(sync_engine, name, refresh)
    # QueuePool.dispose() closes idle connections before it resets its overflow
    # count, so the close events above see a phantom checked-out connection; the
    # new pool is in place when engine_disposed fires.
    event.listen(sync_engine, "engine_disposed", refresh)
    refresh()
